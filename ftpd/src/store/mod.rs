//! Where the daemon keeps files: the local root, with its fast paths (zero-copy reads, staged
//! hard-link commits, batch commits, the hashing cache, scrub), or any backend behind
//! [`storage::Backend`] (S3). Both answer the namespace commands through the trait
//! ([`Files::backend`]); the commands whose local path is faster match on the variant.

mod local;
mod registry;
mod usage;

use std::sync::Arc;

use anyhow::Context;

use storage::{Backend, Home, Root, VPath};

pub use local::LocalBackend;
pub use registry::PgRegistry;
pub use usage::PgUsage;

/// The whole store the daemon serves.
#[derive(Clone)]
pub enum Store {
    /// A directory on this machine.
    Local(LocalBackend),
    /// A backend reached over the network.
    Remote(Arc<dyn Backend>),
}

/// One session's view of the store: its home.
#[derive(Clone)]
pub enum Files {
    Local(LocalBackend),
    Remote(Arc<dyn Backend>),
}

impl Store {
    /// The view of `home` for `user`.
    pub fn home(&self, home: &VPath, user: &str) -> storage::Result<Files> {
        Ok(match self {
            Store::Local(root) => Files::Local(root.view(home, user)?),
            Store::Remote(backend) => Files::Remote(backend.home(home, user)?),
        })
    }

    /// The whole store as one home: what an anonymous session works in.
    pub fn whole(&self) -> Files {
        match self {
            Store::Local(root) => Files::Local(root.clone()),
            Store::Remote(backend) => Files::Remote(backend.clone()),
        }
    }

    /// The store behind the trait.
    pub fn backend(&self) -> &dyn Backend {
        match self {
            Store::Local(root) => root,
            Store::Remote(backend) => backend.as_ref(),
        }
    }

    /// The local root, when that is what is served.
    pub fn local(&self) -> Option<&Root> {
        match self {
            Store::Local(root) => Some(root.root()),
            Store::Remote(_) => None,
        }
    }
}

impl Files {
    /// The local home, when the session's files are on this machine.
    pub fn local(&self) -> Option<&Home> {
        match self {
            Files::Local(view) => Some(view.home()),
            Files::Remote(_) => None,
        }
    }

    /// The session's files behind the trait.
    pub fn backend(&self) -> &dyn Backend {
        match self {
            Files::Local(view) => view,
            Files::Remote(backend) => backend.as_ref(),
        }
    }
}

/// Opens the object store `config.storage` names (probing it: reachable, writable, which
/// conditional requests it honours); fails with one line saying what is wrong. With a
/// `cluster` (`--database`), uploads are registered in its database, fenced, so that any
/// instance continues them, and homes' usage is counted there, so that a quota holds across
/// instances; without, their records are objects in the bucket (one instance).
pub async fn open_remote(
    config: &crate::Config,
    cluster: Option<&crate::cluster::Cluster>,
) -> anyhow::Result<Remote> {
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
        registry: cluster.map(|c| {
            Arc::new(PgRegistry::new(c.state.clone())) as Arc<dyn s3store::UploadRegistry>
        }),
        usage: cluster
            .map(|c| Arc::new(PgUsage::new(c.state.clone())) as Arc<dyn s3store::UsageLedger>),
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
