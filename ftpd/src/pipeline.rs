//! Pipelined uploads of small files: each received whole, written and checked by a blocking
//! task of its own while the next ones arrive, then committed with others in a group (one pair
//! of syncs for the group, not two per file). The answers go out in the order the `put`s came,
//! each only once its file is on disk.

use std::collections::VecDeque;
use std::time::Instant;

use protocol::Eof;
use storage::{Root, Staged};
use tokio::task::JoinHandle;

use crate::error::SessionError;
use crate::reply::CmdError;
use crate::session::Moved;

/// Largest pipelined upload taken whole into memory and written beside others; a larger one
/// streams to its staging file as any `put` does (after the pipeline ahead of it is answered).
pub const SMALL: u64 = protocol::DEFAULT_CHUNK as u64;
/// Uploads received and not yet answered, at most: past it the session reads no further
/// command until a group is committed, and TCP holds the client back. With [`SMALL`] files,
/// at most [`MAX_WRITING`] of them hold their bytes in memory; the rest are staged files.
pub const MAX_PENDING: usize = 64;
/// Uploads written at once by one session (each a blocking task).
pub const MAX_WRITING: usize = 8;

/// What a write task gives back: the staged file and what `stored` will say, or the refusal.
pub type Written = Result<(Box<Staged>, Eof), CmdError>;

/// A reply the pipeline has ready, with what the dispatcher records of it.
pub struct Answer {
    /// What the upload moved, for the transfer log.
    pub moved: Moved,
    /// When its `put` was read.
    pub started: Instant,
    /// `stored` (size and digest), or why not.
    pub reply: Result<Eof, CmdError>,
}

/// One upload of the pipeline, in the order of the commands.
struct Pending {
    /// What it moved, for the transfer log.
    moved: Moved,
    /// When its `put` was read.
    started: Instant,
    /// Where it stands.
    state: State,
}

/// Where an upload of the pipeline stands.
enum State {
    /// A blocking task is writing and checking it.
    Writing(JoinHandle<Written>),
    /// Written and checked (or refused), waiting for its group.
    Written(Written),
}

/// The uploads of one session between their `put` and their answer.
pub struct Pipeline {
    /// In command order; a prefix of written ones makes the next group.
    pending: VecDeque<Pending>,
    /// The group being committed, answers in order.
    committing: Option<JoinHandle<Vec<Answer>>>,
    /// Answers to send, in order.
    answers: VecDeque<Answer>,
    /// How many of `pending` are still being written.
    writing: usize,
    /// The root uploads are committed to; pipelined uploads run only on the local root (on
    /// other backends a pipelined put is an ordinary one).
    root: Option<Root>,
}

impl Pipeline {
    pub fn new(root: Option<Root>) -> Self {
        Pipeline {
            root,
            pending: VecDeque::new(),
            committing: None,
            answers: VecDeque::new(),
            writing: 0,
        }
    }

    /// Whether anything is in flight: an upload to write, a group to commit.
    pub fn busy(&self) -> bool {
        !self.pending.is_empty() || self.committing.is_some()
    }

    /// Whether anything at all is unanswered.
    pub fn idle(&self) -> bool {
        !self.busy() && self.answers.is_empty()
    }

    /// Whether another upload may be taken now.
    pub fn has_room(&self) -> bool {
        self.pending.len() < MAX_PENDING && self.writing < MAX_WRITING
    }

    /// An upload whose task `job` writes it.
    pub fn push(&mut self, moved: Moved, started: Instant, job: JoinHandle<Written>) {
        self.writing += 1;
        let state = State::Writing(job);
        self.pending.push_back(Pending {
            moved,
            started,
            state,
        });
    }

    /// An upload refused before it was written; answered in its turn.
    pub fn refuse(&mut self, moved: Moved, started: Instant, why: CmdError) {
        let state = State::Written(Err(why));
        self.pending.push_back(Pending {
            moved,
            started,
            state,
        });
    }

    /// The next answer to send, in order.
    pub fn next_answer(&mut self) -> Option<Answer> {
        self.answers.pop_front()
    }

    /// Waits until something moves on: an upload written, or a group committed (its answers
    /// then wait in [`Pipeline::next_answer`]). Starts the next group whenever none is being
    /// committed. Cancel-safe: the tasks run on, and a later call waits for them again.
    pub async fn progress(&mut self) -> Result<(), SessionError> {
        self.start_group();
        let (has_group, has_writing) = (self.committing.is_some(), self.writing > 0);
        let first_writing = self.pending.iter_mut().find_map(|p| match &mut p.state {
            State::Writing(job) => Some(job),
            State::Written(_) => None,
        });
        enum Event {
            Committed(Result<Vec<Answer>, tokio::task::JoinError>),
            Written(Result<Written, tokio::task::JoinError>),
            Nothing,
        }
        let committing = self.committing.as_mut();
        let event = tokio::select! {
            done = async { committing.expect("guarded").await }, if has_group => {
                Event::Committed(done)
            }
            written = async { first_writing.expect("guarded").await }, if has_writing => {
                Event::Written(written)
            }
            else => Event::Nothing,
        };
        let failed = |e: tokio::task::JoinError| {
            SessionError::Internal(format!("upload writer failed: {e}"))
        };
        match event {
            Event::Committed(done) => {
                self.committing = None;
                self.answers.extend(done.map_err(failed)?);
            }
            Event::Written(written) => {
                let written = written.map_err(failed)?;
                let slot = self
                    .pending
                    .iter_mut()
                    .find(|p| matches!(p.state, State::Writing(_)))
                    .expect("the one waited for");
                slot.state = State::Written(written);
                self.writing -= 1;
            }
            Event::Nothing => {}
        }
        self.start_group();
        Ok(())
    }

    /// Commits the written uploads at the front, all of them, if no group is being committed.
    fn start_group(&mut self) {
        let Some(root) = &self.root else {
            return;
        };
        if self.committing.is_some() {
            return;
        }
        let ready = self
            .pending
            .iter()
            .take_while(|p| matches!(p.state, State::Written(_)))
            .count();
        if ready == 0 {
            return;
        }
        let group: Vec<Pending> = self.pending.drain(..ready).collect();
        let root = root.clone();
        self.committing = Some(tokio::task::spawn_blocking(move || commit(&root, group)));
    }
}

/// Commits a group with one pair of syncs; refusals keep their place among the answers.
fn commit(root: &Root, group: Vec<Pending>) -> Vec<Answer> {
    let mut staged = Vec::new();
    let mut outcomes = Vec::with_capacity(group.len());
    for p in group {
        let State::Written(written) = p.state else {
            unreachable!("groups hold written uploads only")
        };
        let outcome = written.map(|(file, eof)| {
            staged.push(*file);
            eof
        });
        outcomes.push((p.moved, p.started, outcome));
    }
    let mut placed = storage::commit_group(root, staged).into_iter();
    outcomes
        .into_iter()
        .map(|(mut moved, started, outcome)| {
            let reply = outcome.and_then(|eof| {
                let done = placed.next().expect("a result for each staged file");
                done.map_err(CmdError::from)?;
                moved.digest = Some(eof.digest);
                Ok(eof)
            });
            Answer {
                moved,
                started,
                reply,
            }
        })
        .collect()
}
