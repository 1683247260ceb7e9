//! Tells every session the daemon is stopping (the mini-redis pattern).

use tokio::sync::broadcast;

/// A session's view of the shutdown signal.
#[derive(Debug)]
pub struct Shutdown {
    /// Set once the signal has been seen, so later waits return at once.
    seen: bool,
    /// Receives the one message sent when shutdown starts.
    notify: broadcast::Receiver<()>,
}

impl Shutdown {
    pub fn new(notify: broadcast::Receiver<()>) -> Self {
        Shutdown {
            seen: false,
            notify,
        }
    }

    /// Waits until shutdown begins.
    pub async fn recv(&mut self) {
        if self.seen {
            return;
        }
        // Either a message or a closed channel means the same thing: stop.
        let _ = self.notify.recv().await;
        self.seen = true;
    }
}
