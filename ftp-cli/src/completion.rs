//! Remote listings kept a few seconds, so that tab completion does not ask the server at every Tab.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use protocol::Entry;

/// How long a remote listing is reused for tab completion.
const COMPLETION_CACHE: Duration = Duration::from_secs(5);

/// Recent remote listings, by directory.
#[derive(Default)]
pub(crate) struct Listings {
    /// Each directory's entries, and when they were listed.
    recent: HashMap<String, (Instant, Vec<Entry>)>,
}

impl Listings {
    /// The entries of `dir`, if they were listed only a few seconds ago.
    pub(crate) fn fresh(&self, dir: &str) -> Option<Vec<Entry>> {
        match self.recent.get(dir) {
            Some((at, entries)) if at.elapsed() < COMPLETION_CACHE => Some(entries.clone()),
            _ => None,
        }
    }

    /// Remembers `dir`'s entries as of now.
    pub(crate) fn keep(&mut self, dir: &str, entries: Vec<Entry>) {
        self.recent
            .insert(dir.to_owned(), (Instant::now(), entries));
    }

    /// Forgets every listing: a command may have changed what the server holds.
    pub(crate) fn clear(&mut self) {
        self.recent.clear();
    }
}
