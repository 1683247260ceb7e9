//! `df`: the space and files the user's home holds against the user's own limits, and the
//! root's against the server's.

use protocol::{DfReply, Message, Space};

use crate::cmd::Handled;
use crate::session::Session;
use crate::store::Files;

fn space(u: storage::HomeUsage) -> Space {
    Space {
        bytes: u.bytes,
        files: u.files,
        quota: u.quota,
        max_files: u.max_files,
    }
}

pub async fn run(s: &mut Session) -> Handled {
    let home = match &s.files {
        Files::Local(view) => view.home(),
        Files::Remote(backend) => {
            // What the view holds against its limits: the user's home, or the whole store.
            let usage = space(backend.usage().await?);
            let (user, root) = match &s.user {
                Some(_) => (Some(usage), None),
                None => (None, Some(usage)),
            };
            return Ok(Message::DfReply(DfReply { user, root }));
        }
    };
    let user = s.user.as_ref().and_then(|u| s.accounts.home_usage(u));
    let root = home.root().usage();
    let root = (root.quota.is_some() || root.max_files.is_some()).then_some(root);
    Ok(Message::DfReply(DfReply {
        user: user.map(space),
        root: root.map(space),
    }))
}
