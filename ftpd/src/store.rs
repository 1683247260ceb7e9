//! Where the daemon keeps files: the local root, with its fast paths (zero-copy reads, staged
//! hard-link commits, batch commits, the hashing cache, scrub), or any backend behind
//! [`storage::Backend`] (S3). Commands ask a session's [`Files`] for what they need; the few that
//! differ by backend match on it.

use std::sync::Arc;

use anyhow::Context;

use storage::{Backend, FileInfo, Home, Root, VPath};

use crate::error::{blocking, SessionError};

/// The whole store the daemon serves.
#[derive(Clone)]
pub enum Store {
    /// A directory on this machine.
    Local(Root),
    /// A backend reached over the network.
    Remote(Arc<dyn Backend>),
}

/// One session's view of the store: its home.
#[derive(Clone)]
pub enum Files {
    Local(Home),
    Remote(Arc<dyn Backend>),
}

impl Store {
    /// The view of `home` for `user`.
    pub fn home(&self, home: &VPath, user: &str) -> storage::Result<Files> {
        Ok(match self {
            Store::Local(root) => Files::Local(root.home(home)?.for_user(user)),
            Store::Remote(backend) => Files::Remote(backend.home(home, user)?),
        })
    }

    /// The whole store as one home: what an anonymous session works in.
    pub fn whole(&self) -> storage::Result<Files> {
        Ok(match self {
            Store::Local(root) => Files::Local(root.home(&VPath::root())?),
            Store::Remote(backend) => Files::Remote(backend.clone()),
        })
    }

    /// The promises this store keeps more weakly than the local root (none for the root).
    pub fn weaker(&self) -> Vec<String> {
        match self {
            Store::Local(_) => Vec::new(),
            Store::Remote(backend) => backend.weaker(),
        }
    }

    /// The local root, when that is what is served.
    pub fn local(&self) -> Option<&Root> {
        match self {
            Store::Local(root) => Some(root),
            Store::Remote(_) => None,
        }
    }
}

impl Files {
    /// The local home, when the session's files are on this machine.
    pub fn local(&self) -> Option<&Home> {
        match self {
            Files::Local(home) => Some(home),
            Files::Remote(_) => None,
        }
    }

    pub async fn stat(&self, path: &VPath) -> Result<FileInfo, Failed> {
        match self {
            Files::Local(home) => local(home, path, |h, p| h.stat(p)).await,
            Files::Remote(b) => Ok(b.stat(path).await?),
        }
    }

    pub async fn check_dir(&self, path: &VPath) -> Result<(), Failed> {
        match self {
            Files::Local(home) => local(home, path, |h, p| h.check_dir(p)).await,
            Files::Remote(b) => Ok(b.check_dir(path).await?),
        }
    }

    pub async fn mkdir(&self, path: &VPath, parents: bool) -> Result<(), Failed> {
        match self {
            Files::Local(home) => local(home, path, move |h, p| h.mkdir(p, parents)).await,
            Files::Remote(b) => Ok(b.mkdir(path, parents).await?),
        }
    }

    pub async fn remove_file(&self, path: &VPath) -> Result<(), Failed> {
        match self {
            Files::Local(home) => local(home, path, |h, p| h.remove_file(p)).await,
            Files::Remote(b) => Ok(b.remove_file(path).await?),
        }
    }

    pub async fn remove_dir(&self, path: &VPath) -> Result<(), Failed> {
        match self {
            Files::Local(home) => local(home, path, |h, p| h.remove_dir(p)).await,
            Files::Remote(b) => Ok(b.remove_dir(path).await?),
        }
    }

    pub async fn rename(&self, from: &VPath, to: &VPath) -> Result<(), Failed> {
        match self {
            Files::Local(home) => {
                let to = to.clone();
                local(home, from, move |h, p| h.rename(p, &to)).await
            }
            Files::Remote(b) => Ok(b.rename(from, to).await?),
        }
    }
}

/// A storage call that failed, or a session that cannot go on.
#[derive(Debug)]
pub enum Failed {
    Storage(storage::Error),
    Session(SessionError),
}

impl From<storage::Error> for Failed {
    fn from(e: storage::Error) -> Self {
        Failed::Storage(e)
    }
}

impl From<SessionError> for Failed {
    fn from(e: SessionError) -> Self {
        Failed::Session(e)
    }
}

impl From<Failed> for crate::cmd::Failure {
    fn from(e: Failed) -> Self {
        match e {
            Failed::Storage(e) => e.into(),
            Failed::Session(e) => e.into(),
        }
    }
}

/// Runs one call on the local home off the reactor.
async fn local<T, F>(home: &Home, path: &VPath, f: F) -> Result<T, Failed>
where
    F: FnOnce(&Home, &VPath) -> storage::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let (home, path) = (home.clone(), path.clone());
    Ok(blocking(move || f(&home, &path)).await??)
}

/// Opens the object store `config.storage` names (probing it: reachable, writable, which
/// conditional requests it honours); fails with one line saying what is wrong.
pub async fn open_remote(config: &crate::Config) -> anyhow::Result<Remote> {
    use s3store::{Conditional, PartSize, S3Backend, S3Options};
    let url = config.storage.as_deref().unwrap_or_default();
    let s3 = s3store::Config::from_env(url, config.s3_endpoint.as_deref())
        .with_context(|| format!("cannot use --storage {url}"))?;
    let part_size = PartSize::new(config.s3_part_size).with_context(|| {
        format!(
            "--s3-part-size {} is below S3's least part size, 5MiB",
            config.s3_part_size
        )
    })?;
    let opts = S3Options {
        part_budget: config.s3_part_memory,
        part_size,
        max_file_size: config.max_file_size,
        quota: config.quota,
        max_files: config.max_files,
        ..S3Options::default()
    };
    let backend = S3Backend::open(s3, opts)
        .await
        .with_context(|| format!("cannot serve {url}"))?;
    let report = backend.probe_report();
    let said = |c: Conditional| match c {
        Conditional::Honoured => "honoured",
        Conditional::Ignored => "ignored",
    };
    let summary = format!(
        "{url}: put If-None-Match {}; complete If-None-Match {}",
        said(report.put_if_none_match),
        said(report.complete_if_none_match)
    );
    Ok(Remote {
        backend: Arc::new(backend),
        summary,
    })
}

/// An opened object store and what its probe found.
pub struct Remote {
    pub backend: Arc<dyn Backend>,
    /// One line: what the service honours (`--check-config`).
    pub summary: String,
}
