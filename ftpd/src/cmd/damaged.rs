//! `damaged`: a client's report that a download failed against the digests recorded at upload,
//! which only the client can see. The file is marked for the next scrub, logged and counted,
//! and read again at once if a hashing slot is free.
//!
//! A report is bounded work whatever the file: the path is resolved and checked like every
//! other (in the home, a regular file, with a record), then a stat, a record's read and a small
//! write. The re-read runs only for a file newly marked (a second report of it does nothing
//! more until a scrub settles it), only in a free slot of the whole-file hashing limit, and on
//! the blocking pool, so no client can make the daemon hash a file over and over.

use protocol::{Damaged, Message};
use storage::{Marked, Verdict};
use tracing::{debug, error, info, warn};

use crate::cmd::Handled;
use crate::error::blocking;
use crate::logging::Wire;
use crate::reply::CmdError;
use crate::session::Session;

pub async fn run(s: &mut Session, req: Damaged) -> Handled {
    let path = s.resolve(&req.path)?;
    let offset = req.offset;
    let user = s.user.as_ref().map(|u| u.name.clone()).unwrap_or_default();
    let Some(home) = s.files.local().cloned() else {
        // An object store keeps no suspects list and has no scrub: the report is logged.
        metrics::counter!("ftpd_damaged_reports_total").increment(1);
        warn!(peer = %s.peer, user = %Wire(&user), path = %Wire(&path.to_string()), offset,
              "client reports a damaged file (on object storage: not marked, no scrub)");
        return Ok(Message::Ok);
    };
    let target = path.clone();
    let in_root = home.root_path(&path).to_string();
    let marked = blocking(move || home.report_damaged(&target, offset)).await??;
    let (peer, shown) = (s.peer, Wire(&in_root));
    metrics::counter!("ftpd_damaged_reports_total").increment(1);
    match marked {
        Marked::Unrecorded => return Err(CmdError::Unrecorded { path }.into()),
        Marked::Full => {
            warn!(%peer, user = %Wire(&user), path = %shown, offset,
                  "client reports a damaged file; not marked: the suspects list is full (run ftpd scrub)");
        }
        Marked::Already => {
            warn!(%peer, user = %Wire(&user), path = %shown, offset,
                  "client reports a damaged file, marked for the next scrub already");
        }
        Marked::New => {
            warn!(%peer, user = %Wire(&user), path = %shown, offset,
                  "client reports a damaged file; marked for the next scrub");
            recheck(s, path, in_root);
        }
    }
    Ok(Message::Ok)
}

/// Reads the reported file again in the background, in a free hashing slot, and logs what it
/// is: damage confirmed at ERROR. Without a free slot the next scrub checks it.
fn recheck(s: &Session, path: storage::VPath, in_root: String) {
    let Some(slot) = s.hashing.try_slot() else {
        debug!(path = %Wire(&in_root), "no hashing slot free: the report waits for the next scrub");
        return;
    };
    let Some(home) = s.files.local().cloned() else {
        return;
    };
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let shown = Wire(&in_root);
        match home.check_against_record(&path) {
            Verdict::Damaged { from } => {
                error!(path = %shown, from, "damaged file confirmed: its bytes no longer match the digest recorded at upload");
            }
            Verdict::Intact => {
                info!(path = %shown, "reported damaged, but it matches its record now");
            }
            Verdict::Gone => info!(path = %shown, "reported damaged, and gone since"),
            Verdict::Unverifiable(why) => {
                info!(path = %shown, "reported damaged, cannot be checked now: {why}");
            }
        }
    });
}
