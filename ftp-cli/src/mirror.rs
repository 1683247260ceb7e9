//! `mirror`: makes a target tree like a source tree (lftp's names: `mirror REMOTE [LOCAL]`
//! downloads, `mirror -R LOCAL [REMOTE]` uploads), moving only what is new or changed, on the
//! batch engine.
//!
//! A file is changed when its size or modification time (whole seconds) differs; with
//! `--checksum`, when its content differs, whatever the times: the local side hashes its files,
//! the server answers with the digests it recorded at upload (a listing, no file read), and
//! asks the server to hash only files it holds no record for.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use indicatif::HumanBytes;
use protocol::{Digest, DigestKind, EntryKind, Hasher};

use crate::batch::{self, Files};
use crate::client::{safe_name, Client, TransferOptions};
use crate::error::{ClientError, Result};
use crate::link::{Dial, Link};
use crate::output::{Output, Shown};
use crate::retry::Transfer;
use crate::tree::{join, MAX_TREE_ENTRIES};

/// Deepest tree walked on either side.
const MAX_DEPTH: usize = 64;

/// What `mirror` was asked to do.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    /// Upload: the local tree is the source (`-R`).
    pub reverse: bool,
    /// Remove from the target what the source no longer has.
    pub delete: bool,
    /// Say what would be done, and do nothing.
    pub dry_run: bool,
    /// Compare content, not size and time.
    pub checksum: bool,
    /// Only paths matching one of these (all, when empty).
    pub include: Vec<glob::Pattern>,
    /// Never paths matching one of these.
    pub exclude: Vec<glob::Pattern>,
}

impl Options {
    /// Whether `rel` (a `/`-joined path under the tree's top) takes part: matched against the
    /// whole path and against its last name.
    fn takes(&self, rel: &str, is_dir: bool) -> bool {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        let hit = |p: &glob::Pattern| p.matches(rel) || p.matches(name);
        if self.exclude.iter().any(hit) {
            return false;
        }
        // Directories are walked whatever the includes say: their files may match.
        is_dir || self.include.is_empty() || self.include.iter().any(hit)
    }
}

/// One side's view of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    dir: bool,
    size: u64,
    /// Whole seconds since the Unix epoch.
    mtime: Option<i64>,
    /// The server's recorded digest (remote side, `--checksum` only).
    digest: Option<Digest>,
}

/// A tree: every path under its top, `/`-joined, to what it is.
type Tree = BTreeMap<String, Node>;

/// What a run found to do.
#[derive(Default)]
struct Plan {
    new: Vec<(String, u64)>,
    changed: Vec<(String, u64)>,
    /// Target paths to remove, files first, then directories deepest first.
    delete: Vec<(String, bool)>,
    /// Directories to make on the target, parents first.
    dirs: Vec<String>,
    /// Files the same on both sides (by size and time; with `--checksum`, by content too).
    unchanged: Vec<String>,
    /// Paths that are a file on one side and a directory on the other: reported, not moved.
    conflicts: Vec<String>,
}

/// Runs `mirror SOURCE TARGET` (remote to local, or with `-R` local to remote).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    dial: &Dial,
    link: &mut Link,
    retries: u32,
    parallel: usize,
    output: &Output,
    source: &str,
    target: &str,
    opts: &Options,
) -> Result<()> {
    let (remote, local) = if opts.reverse {
        (target, PathBuf::from(source))
    } else {
        (source, PathBuf::from(target))
    };
    if opts.reverse && !local.is_dir() {
        return Err(ClientError::Usage(format!(
            "mirror -R {}: not a local directory",
            local.display()
        )));
    }
    let client = link.client(dial).await?;
    let remote_tree = match remote_walk(client, remote, opts).await {
        Ok(tree) => tree,
        // Uploading to a directory not made yet: it is all new.
        Err(ClientError::Remote(e)) if opts.reverse && e.code == protocol::ErrorCode::NotFound => {
            Tree::new()
        }
        Err(e) => return Err(e),
    };
    let local_tree = local_walk(&local, opts)?;
    let kind = client.digest_kind();
    let (src, dst) = if opts.reverse {
        (&local_tree, &remote_tree)
    } else {
        (&remote_tree, &local_tree)
    };
    let mut plan = compare(src, dst, opts.delete);
    if opts.checksum {
        let mut same = Vec::new();
        for rel in std::mem::take(&mut plan.unchanged) {
            let recorded = remote_tree.get(&rel).and_then(|n| n.digest);
            // No record on the server: it hashes this one file (MD5, all `stat` gives).
            let theirs = match recorded {
                Some(d) => Some(d),
                None => client.stat(&join(remote, &rel), true).await?.md5,
            };
            let kind = theirs.map_or(kind, |d| d.kind());
            let ours = local_digest(local.join(&rel), kind).await?;
            if theirs == Some(ours) {
                same.push(rel);
            } else {
                let size = src[&rel].size;
                plan.changed.push((rel, size));
            }
        }
        plan.unchanged = same;
        plan.changed.sort();
    }
    let bytes: u64 = plan.new.iter().chain(&plan.changed).map(|(_, s)| *s).sum();
    let what = if opts.dry_run { "would be " } else { "" };
    if opts.dry_run {
        for (rel, _) in &plan.new {
            output.line(format_args!("new {}", Shown(rel)))?;
        }
        for (rel, _) in &plan.changed {
            output.line(format_args!("changed {}", Shown(rel)))?;
        }
        for (rel, _) in &plan.delete {
            output.line(format_args!("delete {}", Shown(rel)))?;
        }
    }
    for rel in &plan.conflicts {
        output.diagnostic(format_args!(
            "mirror: {}: a file on one side and a directory on the other; left alone",
            Shown(rel)
        ));
    }
    let mut failed = plan.conflicts.len();
    if !opts.dry_run {
        failed += apply(
            dial, link, retries, parallel, output, remote, &local, opts, &plan,
        )
        .await?;
    }
    let summary = format!(
        "mirror: {} new, {} changed, {} deleted, {} unchanged, {} {what}moved{}",
        plan.new.len(),
        plan.changed.len(),
        plan.delete.len(),
        plan.unchanged.len(),
        HumanBytes(bytes),
        if opts.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        },
    );
    let counts = crate::output::Mirrored {
        new: plan.new.len(),
        changed: plan.changed.len(),
        deleted: plan.delete.len(),
        unchanged: plan.unchanged.len(),
        bytes,
        dry_run: opts.dry_run,
    };
    output.mirror(&summary, &counts)?;
    match failed {
        0 => Ok(()),
        failed => Err(ClientError::SomeFailed {
            failed,
            total: plan.new.len() + plan.changed.len() + plan.delete.len() + plan.conflicts.len(),
        }),
    }
}

/// Makes the target like the plan says: directories, then the files (on the batch engine,
/// replacing changed ones), then the deletions. Returns how many steps failed.
#[allow(clippy::too_many_arguments)]
async fn apply(
    dial: &Dial,
    link: &mut Link,
    retries: u32,
    parallel: usize,
    output: &Output,
    remote: &str,
    local: &Path,
    opts: &Options,
    plan: &Plan,
) -> Result<usize> {
    let mut failed = 0;
    // The target's top first: the source may have no directory of its own to make.
    for dir in std::iter::once(&String::new()).chain(&plan.dirs) {
        if opts.reverse {
            link.client(dial)
                .await?
                .mkdir(&join(remote, dir), true)
                .await?;
        } else {
            let path = local.join(dir);
            fs::create_dir_all(&path).map_err(|e| ClientError::local(&path, e))?;
        }
    }
    let items: Vec<_> = plan
        .new
        .iter()
        .chain(&plan.changed)
        .map(|(rel, size)| {
            let (remote, local) = (join(remote, rel), local.join(rel));
            let t = if opts.reverse {
                Transfer::Put { local, remote }
            } else {
                Transfer::Get { remote, local }
            };
            (t, *size)
        })
        .collect();
    if !items.is_empty() {
        let moved = TransferOptions {
            overwrite: true,
            resume: false,
        };
        let files = Files::from(items);
        match batch::run(dial, link, retries, parallel, output, files, moved).await {
            Ok(()) => {}
            Err(ClientError::SomeFailed { failed: n, .. }) => failed += n,
            Err(e) => return Err(e),
        }
    }
    for (rel, dir) in &plan.delete {
        let result = if opts.reverse {
            let c = link.client(dial).await?;
            let at = join(remote, rel);
            if *dir {
                c.rmdir(&at).await
            } else {
                c.rm(&at).await
            }
        } else {
            let path = local.join(rel);
            let removed = if *dir {
                fs::remove_dir(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(|e| ClientError::local(&path, e))
        };
        if let Err(e) = result {
            failed += 1;
            output.diagnostic(format_args!("mirror: delete {}: {e}", Shown(rel)));
        }
    }
    Ok(failed)
}

/// What differs between the source and target trees, by size and time.
fn compare(src: &Tree, dst: &Tree, delete: bool) -> Plan {
    let mut plan = Plan::default();
    for (rel, s) in src {
        match (dst.get(rel), s.dir) {
            (None, true) => plan.dirs.push(rel.clone()),
            (Some(d), true) if !d.dir => plan.conflicts.push(rel.clone()),
            (Some(_), true) => {}
            (None, false) => plan.new.push((rel.clone(), s.size)),
            (Some(d), false) if d.dir => plan.conflicts.push(rel.clone()),
            (Some(d), false) if d.size != s.size || d.mtime != s.mtime => {
                plan.changed.push((rel.clone(), s.size));
            }
            (Some(_), false) => plan.unchanged.push(rel.clone()),
        }
    }
    if delete {
        // Files first, then directories from the deepest up: each is empty when removed.
        let mut gone: Vec<(String, bool)> = dst
            .iter()
            .filter(|(rel, _)| !src.contains_key(*rel))
            .filter(|(rel, _)| !under_conflict(rel, &plan.conflicts))
            .map(|(rel, n)| (rel.clone(), n.dir))
            .collect();
        gone.sort_by_key(|(rel, dir)| (*dir, std::cmp::Reverse(rel.matches('/').count())));
        plan.delete = gone;
    }
    plan
}

/// Whether `rel` lies under a path left alone for a conflict.
fn under_conflict(rel: &str, conflicts: &[String]) -> bool {
    conflicts.iter().any(|c| {
        rel.strip_prefix(c.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// The remote tree under `top`, with recorded digests when `--checksum` wants them. Names
/// that are not plain file names are skipped with a warning (as `get -r` does).
async fn remote_walk(client: &mut Client, top: &str, opts: &Options) -> Result<Tree> {
    let mut tree = Tree::new();
    let mut pending = vec![(String::new(), 0usize)];
    while let Some((rel, depth)) = pending.pop() {
        let at = join(top, &rel);
        let entries = if opts.checksum {
            client.list_digests(&at).await?
        } else {
            client.list(&at).await?
        };
        if tree.len() + entries.len() > MAX_TREE_ENTRIES {
            return Err(ClientError::Limit(format!(
                "mirror {top}: the server lists more than {MAX_TREE_ENTRIES} entries, the client's cap"
            )));
        }
        for e in entries {
            let Ok(name) = safe_name(&e.name) else {
                crate::output::diagnostic(format_args!(
                    "mirror: skipping {}: not a plain file name",
                    Shown(&e.name)
                ));
                continue;
            };
            let child = join(&rel, name);
            let dir = match e.kind {
                EntryKind::File => false,
                EntryKind::Dir => true,
                _ => continue,
            };
            if !opts.takes(&child, dir) {
                continue;
            }
            if dir && depth < MAX_DEPTH {
                pending.push((child.clone(), depth + 1));
            }
            let node = Node {
                dir,
                size: if dir { 0 } else { e.size },
                mtime: if dir { None } else { e.mtime },
                digest: e.digest,
            };
            tree.insert(child, node);
        }
    }
    Ok(tree)
}

/// The local tree under `top` (nothing, when it does not exist yet). Symlinks are skipped.
fn local_walk(top: &Path, opts: &Options) -> Result<Tree> {
    let mut tree = Tree::new();
    if !top.exists() {
        return Ok(tree);
    }
    let mut pending = vec![(String::new(), 0usize)];
    while let Some((rel, depth)) = pending.pop() {
        let dir = top.join(&rel);
        for entry in fs::read_dir(&dir).map_err(|e| ClientError::local(&dir, e))? {
            let entry = entry.map_err(|e| ClientError::local(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = join(&rel, &name);
            let Ok(ft) = entry.file_type() else { continue };
            if !(ft.is_dir() || ft.is_file()) || !opts.takes(&child, ft.is_dir()) {
                continue;
            }
            if child.ends_with(".ftp-part") {
                continue; // a download in progress, not part of the tree
            }
            let meta = entry
                .metadata()
                .map_err(|e| ClientError::local(&entry.path(), e))?;
            if ft.is_dir() && depth < MAX_DEPTH {
                pending.push((child.clone(), depth + 1));
            }
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64);
            let node = Node {
                dir: ft.is_dir(),
                size: if ft.is_dir() { 0 } else { meta.len() },
                mtime: if ft.is_dir() { None } else { mtime },
                digest: None,
            };
            tree.insert(child, node);
        }
    }
    Ok(tree)
}

/// The whole-file digest of a local file, hashed off the reactor.
async fn local_digest(path: PathBuf, kind: DigestKind) -> Result<Digest> {
    let hashed = tokio::task::spawn_blocking(move || {
        let mut file = fs::File::open(&path).map_err(|e| ClientError::local(&path, e))?;
        let mut hasher = Hasher::new(kind);
        hasher
            .update_from(&mut file, u64::MAX)
            .map_err(|e| ClientError::local(&path, e))?;
        Ok(hasher.finish())
    });
    hashed
        .await
        .map_err(|e| ClientError::Internal(format!("hashing failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, mtime: i64) -> Node {
        Node {
            dir: false,
            size,
            mtime: Some(mtime),
            digest: None,
        }
    }

    fn dir() -> Node {
        Node {
            dir: true,
            size: 0,
            mtime: None,
            digest: None,
        }
    }

    #[test]
    fn compares_by_size_and_time_and_deletes_deepest_first() {
        let src: Tree = [
            ("a".to_owned(), file(1, 10)),
            ("b".to_owned(), file(2, 10)),
            ("d".to_owned(), dir()),
            ("d/e".to_owned(), file(3, 10)),
            ("x".to_owned(), file(1, 10)),
        ]
        .into();
        let dst: Tree = [
            ("a".to_owned(), file(1, 10)),
            ("b".to_owned(), file(2, 11)),
            ("old".to_owned(), dir()),
            ("old/deep".to_owned(), dir()),
            ("old/deep/f".to_owned(), file(1, 1)),
            ("x".to_owned(), dir()),
        ]
        .into();
        let plan = compare(&src, &dst, true);
        assert_eq!(plan.unchanged, ["a"]);
        assert_eq!(plan.changed, [("b".to_owned(), 2)]);
        assert_eq!(plan.new, [("d/e".to_owned(), 3)]);
        assert_eq!(plan.dirs, ["d"]);
        assert_eq!(plan.conflicts, ["x"]);
        assert_eq!(
            plan.delete,
            [
                ("old/deep/f".to_owned(), false),
                ("old/deep".to_owned(), true),
                ("old".to_owned(), true)
            ]
        );
        assert!(compare(&src, &dst, false).delete.is_empty());
    }

    #[test]
    fn filters_match_the_path_or_the_name() {
        let opts = Options {
            include: vec![glob::Pattern::new("*.jpg").unwrap()],
            exclude: vec![glob::Pattern::new("tmp").unwrap()],
            ..Options::default()
        };
        assert!(opts.takes("2024/a.jpg", false));
        assert!(!opts.takes("2024/a.png", false));
        assert!(opts.takes("2024", true), "directories are walked");
        assert!(!opts.takes("tmp", true));
        assert!(!opts.takes("x/tmp", true));
    }
}
