//! The scheduled scrub (`--scrub-every`): every stored file read again in the background and
//! compared with the digest recorded at its upload, the files clients reported damaged first.
//!
//! One file at a time, each in a slot of the whole-file hashing limit (`--max-hashing`), on the
//! blocking pool: a scrub holds at most one slot, so clients' hashing keeps the others.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use storage::{Root, Verdict};
use tracing::{error, info, warn};

use crate::hashing::Hashing;
use crate::logging::Wire;

/// Scrubs `root` every `period`, the first run one period after startup, until the task is
/// dropped (a run in progress stops after the file it is reading).
pub async fn every(root: Root, hashing: Arc<Hashing>, period: Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let _stop = StopOnDrop(stop.clone());
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate
    loop {
        tick.tick().await;
        let (root, hashing, stop) = (root.clone(), hashing.clone(), stop.clone());
        let handle = tokio::runtime::Handle::current();
        let run = tokio::task::spawn_blocking(move || run(&root, &hashing, &stop, &handle));
        if let Err(e) = run.await {
            error!("scheduled scrub failed: {e}");
        }
    }
}

/// Sets the flag when dropped: the scrub task was stopped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One scrub, on a blocking thread: suspects first (their marks cleared once settled), then
/// every other file; each damaged file logged at ERROR, then a summary line, and the metrics.
fn run(root: &Root, hashing: &Hashing, stop: &AtomicBool, handle: &tokio::runtime::Handle) {
    let started = Instant::now();
    let (mut checked, mut damaged, mut unverifiable) = (0u64, 0u64, 0u64);
    let mut count = |path: &str, verdict: &Verdict| match verdict {
        Verdict::Intact => checked += 1,
        Verdict::Damaged { from } => {
            checked += 1;
            damaged += 1;
            error!(path = %Wire(path), from, "scrub found a damaged file: its bytes no longer match the digest recorded at upload");
        }
        Verdict::Unverifiable(_) => unverifiable += 1,
        Verdict::Gone => {}
    };
    let mut done = HashSet::new();
    for suspect in root.suspects() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let slot = handle.block_on(hashing.slot());
        let verdict = root.check_path(&suspect.path);
        drop(slot);
        let shown = suspect.path.to_string();
        info!(path = %Wire(&shown), verdict = ?verdict, "scrub checked a file reported damaged");
        if verdict.settles() {
            root.clear_suspect(&suspect.path);
        }
        count(&shown, &verdict);
        done.insert(shown);
    }
    let mut files = root.scrub_except(done);
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let slot = handle.block_on(hashing.slot());
        let Some(found) = files.next() else {
            break;
        };
        drop(slot);
        count(&found.path, &found.verdict);
    }
    let secs = started.elapsed().as_secs_f64();
    metrics::counter!("ftpd_scrub_runs_total").increment(1);
    metrics::counter!("ftpd_scrub_files_checked_total").increment(checked);
    metrics::gauge!("ftpd_scrub_damaged_files").set(damaged as f64);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    metrics::gauge!("ftpd_scrub_last_run_timestamp_seconds").set(now.as_secs_f64());
    if damaged > 0 {
        warn!(
            checked,
            damaged, unverifiable, secs, "scheduled scrub done: damaged files found"
        );
    } else {
        info!(checked, damaged, unverifiable, secs, "scheduled scrub done");
    }
}
