//! Many-file commands: files moved side by side, each slot on a connection of its own.

use std::cell::{Cell, RefCell};

use crate::client::{self, Cut, Job, Jobs, Summary, TransferOptions};
use crate::error::{ClientError, Result};
use crate::link::{Dial, Link};
use crate::output::{Output, Total};
use crate::progress::{BatchBars, SlotProgress};
use crate::retry::{reconnect, transfer_again, until_done_or_ctrl_c, Transfer};

/// Past this many files, a many-file command prints its total line only, not one line per file,
/// unless told `-v` (or the session `--verbose`): a thousand "verified" lines hide the one
/// that says whether all went well.
pub(crate) const QUIET_ABOVE: usize = 10;

/// How many "already exists" failures a batch shows one by one (without `-v`); the rest are
/// counted in one line with what to do instead.
const SHOWN_EXISTING: usize = 3;

/// Whether `e` refused a file because its target is there already (remote for a put, local
/// for a get): the usual failure of a tree sent a second time.
fn already_there(e: &ClientError) -> bool {
    match e {
        ClientError::LocalExists(_) => true,
        ClientError::Remote(r) => r.code == protocol::ErrorCode::Exists,
        _ => false,
    }
}

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

/// Moves `items` (each file with its size) over `parallel` connections (`link`, the session's,
/// and more made for the batch). On each, small files are pipelined (see
/// [`crate::client::Client::put_many`]): no file waits for the one before it to be answered,
/// and the server syncs them in groups. Larger files, files to resume, and files a cut
/// pipeline left unanswered go one at a time, each resumed part-way when its link fails. One
/// overall bar and one per connection.
/// A failure is reported and the rest go on; the command fails at the end if any did (or if
/// `files` says some were refused before it began).
/// A line per file up to [`QUIET_ABOVE`] files (or with `--verbose`); no total line: the
/// caller (`mirror`) prints its own.
pub(crate) async fn run(
    dial: &Dial,
    link: &mut Link,
    retries: u32,
    parallel: usize,
    output: &Output,
    files: Files,
    opts: TransferOptions,
) -> Result<()> {
    let dial = (dial, retries, parallel);
    run_batch(dial, link, output, files, opts, None).await
}

/// [`run`] for a command of its own (`put -r`, `mget`, ...): it ends with one total line under
/// `what`, and `verbose` (`-v`) prints every file's line however many there are.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_command(
    dial: &Dial,
    link: &mut Link,
    retries: u32,
    parallel: usize,
    output: &Output,
    files: Files,
    opts: TransferOptions,
    what: &str,
    verbose: bool,
) -> Result<()> {
    let dial = (dial, retries, parallel);
    run_batch(dial, link, output, files, opts, Some((what, verbose))).await
}

async fn run_batch(
    (dial, retries, parallel): (&Dial, u32, usize),
    link: &mut Link,
    output: &Output,
    files: Files,
    opts: TransferOptions,
    command: Option<(&str, bool)>,
) -> Result<()> {
    let started = std::time::Instant::now();
    let Files { items, refused } = files;
    let verbose = command.is_some_and(|(_, v)| v) || output.every_file();
    let (moving, total) = (items.len(), items.len() + refused);
    // The sizes are the server's word for `get -r` and `mget`: their sum must not overflow.
    let bytes = items
        .iter()
        .fold(0u64, |sum, (_, size)| sum.saturating_add(*size));
    let slots = parallel.clamp(1, moving.max(1));
    let put = matches!(items.first(), Some((Transfer::Put { .. }, _)));
    let batch = Batch {
        dial,
        retries,
        opts,
        output,
        queue: RefCell::new(items.into_iter()),
        later: RefCell::new(Vec::new()),
        put,
        bars: BatchBars::new(output.bars(), moving, bytes, slots),
        failed: Cell::new(refused),
        stopped: RefCell::new(None),
        each: verbose || moving <= QUIET_ABOVE,
        done: Cell::new((0, 0)),
        existing: Cell::new(0),
        each_failure: verbose,
        reached: Cell::new(link.current().is_some()),
    };
    let mut extra: Vec<Link> = (1..slots).map(|_| Link::new(link.cwd.clone())).collect();
    let links = std::iter::once(link).chain(extra.iter_mut());
    let workers = links.enumerate().map(|(i, link)| batch.worker(link, i));
    futures::future::join_all(workers).await;
    for link in &mut extra {
        link.close().await;
    }
    batch.bars.finish();
    let stopped = batch.stopped.take();
    if let Some((what, _)) = command {
        // Also after Ctrl-C, to say how far it got; not once nobody reads stdout.
        if !matches!(stopped, Some(ClientError::Stdout(_))) {
            let (files, bytes) = batch.done.get();
            let total = Total {
                files,
                bytes,
                elapsed: started.elapsed(),
                failed: batch.failed.get(),
            };
            output.total(what, &total)?;
        }
    }
    let existing = batch.existing.get();
    if existing > 0 {
        let hidden = existing.saturating_sub(SHOWN_EXISTING);
        let more = if hidden > 0 && !verbose {
            format!(" ({hidden} more not shown)")
        } else {
            String::new()
        };
        let side = if put { "on the server" } else { "here" };
        let files = if existing == 1 { "file" } else { "files" };
        output.diagnostic(format_args!(
            "{existing} {files} already {side}{more}: -c skips the complete ones and \
             continues partial ones, -f replaces them"
        ));
    }
    if let Some(why) = stopped {
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
    /// Files for the one-at-a-time path: too large to pipeline, or left by a pipeline (then
    /// marked as perhaps sent already).
    later: RefCell<Vec<(Item, bool)>>,
    /// Uploads, else downloads: a batch is one or the other.
    put: bool,
    /// The overall bar and one per slot.
    bars: BatchBars,
    /// Files that failed so far.
    failed: Cell<usize>,
    /// Why the batch stopped early, if it did: the user pressed Ctrl-C, or nobody reads stdout
    /// any more. Nothing more is started, and the command fails with it.
    stopped: RefCell<Option<ClientError>>,
    /// Print a line for every file, not only the total: few files, or `-v`.
    each: bool,
    /// Files verified so far, and their bytes, for the total line.
    done: Cell<(usize, u64)>,
    /// Files refused because the target is there already (see [`already_there`]).
    existing: Cell<usize>,
    /// Print every failure, however many are alike: `-v`.
    each_failure: bool,
    /// Whether the server answered this command: once it has, a connect that fails means it
    /// went away (a restart), and is tried again up to `--retry-for`, not taken as final.
    reached: Cell<bool>,
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
        if !self.opts.resume {
            self.pipelined(link, &mut progress, slot).await;
        }
        while self.stopped.borrow().is_none() {
            if self.later.borrow().is_empty() && self.queue.borrow().len() == 0 {
                break;
            }
            // The server went away under an earlier file: wait for it here, once for the slot,
            // rather than fail every file left in a connect that comes too soon.
            if link.current().is_none() {
                if let Err(e) = self.reach(link, slot).await {
                    if slot == 0 {
                        self.stop(e);
                    }
                    break;
                }
            }
            let next = self.later.borrow_mut().pop();
            let next = next.or_else(|| self.queue.borrow_mut().next().map(|item| (item, false)));
            let Some(((t, size), sent_before)) = next else {
                break;
            };
            let (retries, opts) = (self.retries, self.opts);
            let job = transfer_again(
                self.dial,
                link,
                retries,
                &t,
                opts,
                &mut progress,
                self.output,
                sent_before,
            );
            let result = job.await;
            self.ended(&mut progress, &t, size, result);
        }
    }

    /// Moves the small files of the queue pipelined over `link`, until none is left; a cut
    /// pipeline starts again on a new connection, up to the retries, its unanswered files
    /// left for the one-at-a-time path.
    async fn pipelined(&self, link: &mut Link, progress: &mut SlotProgress, slot: usize) {
        let mut cuts = 0;
        while self.stopped.borrow().is_none() {
            if self.reach(link, slot).await.is_err() {
                return;
            }
            let Some(c) = link.current() else {
                return;
            };
            if !c.pipelines() {
                return;
            }
            let cancel = c.cancel_token();
            let (put, overwrite) = (self.put, self.opts.overwrite);
            let result = {
                let mut jobs = Pipe {
                    batch: self,
                    progress: &mut *progress,
                };
                let run = async {
                    if put {
                        c.put_many(&mut jobs, overwrite).await
                    } else {
                        c.get_many(&mut jobs, overwrite).await
                    }
                };
                until_done_or_ctrl_c(run, cancel).await
            };
            let Err(Cut { error, unanswered }) = result else {
                return;
            };
            link.forget();
            let left = unanswered
                .into_iter()
                .map(|job| ((to_transfer(put, &job), job.size), true));
            self.later.borrow_mut().extend(left);
            if let ClientError::Cancelled = error {
                self.stop(ClientError::Cancelled);
                return;
            }
            cuts += 1;
            if !error.is_retriable() || cuts > self.retries {
                return;
            }
            self.output.diagnostic(format_args!(
                "{error}, resuming the batch ({cuts}/{})",
                self.retries
            ));
        }
    }

    /// Connects `link`: once the server has answered this command, a failed connect is tried
    /// again up to `--retry-for` (slot 0 saying so), since the server may be restarting.
    async fn reach(&self, link: &mut Link, slot: usize) -> Result<()> {
        let result = if self.reached.get() {
            reconnect(self.dial, link, self.output, slot == 0).await
        } else {
            link.client(self.dial).await.map(drop)
        };
        if result.is_ok() {
            self.reached.set(true);
        }
        result
    }

    /// How a file of the batch ended: reported, counted, or left for another try.
    fn ended(&self, progress: &mut SlotProgress, t: &Transfer, size: u64, result: Result<Summary>) {
        match result {
            Ok(summary) => {
                self.bars.file_done(progress, size);
                let (files, bytes) = self.done.get();
                self.done
                    .set((files + 1, bytes.saturating_add(summary.size)));
                if !self.each {
                    return;
                }
                if let Err(e) = self.bars.suspend(|| self.output.summary(t.op(), &summary)) {
                    self.stop(e);
                }
            }
            Err(ClientError::Cancelled) => self.stop(ClientError::Cancelled),
            Err(e) => {
                self.bars.file_done(progress, size);
                self.failed.set(self.failed.get() + 1);
                if already_there(&e) {
                    let n = self.existing.get() + 1;
                    self.existing.set(n);
                    // A tree sent again: the first few say so, the total says how many.
                    if n > SHOWN_EXISTING && !self.each_failure {
                        return;
                    }
                }
                self.bars.suspend(|| {
                    let what = format!("{} {}", t.op(), t.name());
                    self.output.failure(format_args!("{what}: {e}"), &e);
                });
            }
        }
    }

    /// Starts nothing more; the command fails with the first reason given.
    fn stop(&self, why: ClientError) {
        self.stopped.borrow_mut().get_or_insert(why);
    }
}

/// A pipeline's view of the batch: it takes the small files of the queue (leaving the others
/// for later) and reports each as it ends.
struct Pipe<'a, 'b> {
    batch: &'a Batch<'b>,
    progress: &'a mut SlotProgress,
}

impl Jobs for Pipe<'_, '_> {
    fn next(&mut self) -> Option<Job> {
        if self.batch.stopped.borrow().is_some() {
            return None;
        }
        loop {
            let (t, size) = self.batch.queue.borrow_mut().next()?;
            if size > client::SMALL {
                self.batch.later.borrow_mut().push(((t, size), false));
                continue;
            }
            let (local, remote) = match t {
                Transfer::Put { local, remote } | Transfer::Get { remote, local } => {
                    (local, remote)
                }
            };
            return Some(Job {
                local,
                remote,
                size,
            });
        }
    }

    fn done(&mut self, job: Job, result: Result<Summary>) {
        let t = to_transfer(self.batch.put, &job);
        match result {
            // Damage in transit, a busy server: once more, on the one-at-a-time path.
            Err(e) if e.is_retriable() => {
                self.batch.later.borrow_mut().push(((t, job.size), false));
            }
            result => self.batch.ended(self.progress, &t, job.size, result),
        }
    }
}

/// The transfer a pipeline's file stands for.
fn to_transfer(put: bool, job: &Job) -> Transfer {
    let (local, remote) = (job.local.clone(), job.remote.clone());
    if put {
        Transfer::Put { local, remote }
    } else {
        Transfer::Get { remote, local }
    }
}
