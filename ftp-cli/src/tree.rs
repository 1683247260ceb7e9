//! What `put -r`, `get -r`, `mput` and `mget` move: directory trees and patterns made into files.

use std::path::{Path, PathBuf};

use protocol::{Entry, EntryKind};

use crate::batch::{Files, Item};
use crate::client::{beneath, safe_name};
use crate::error::{ClientError, Result};
use crate::output::Output;
use crate::retry::Transfer;

/// Deepest directory tree `get -r` descends into.
const MAX_DEPTH: usize = 64;
/// Most entries (files, directories, and names refused or skipped) `get -r` takes from the
/// server's listings of one tree: a server listing ever more subdirectories would otherwise
/// have the client make directories, and hold transfers in memory, without end. Past it the
/// command stops before it makes anything more.
pub const MAX_TREE_ENTRIES: usize = 1_000_000;

/// `put -r`: the remote directories to make (`remote` itself first, each before its children)
/// and the files to send, each with its size.
pub(crate) fn put_tree(
    local: &Path,
    remote: &str,
    output: &Output,
) -> Result<(Vec<String>, Vec<Item>)> {
    let mut dirs = vec![String::new()];
    let mut files = Vec::new();
    walk_local(local, "", &mut dirs, &mut files, output)?;
    let dirs = dirs.iter().map(|d| join(remote, d)).collect();
    let items = files
        .into_iter()
        .map(|(rel, size)| {
            let t = Transfer::Put {
                local: local.join(&rel),
                remote: join(remote, &rel),
            };
            (t, size)
        })
        .collect();
    Ok((dirs, items))
}

/// `get -r`: the files under `remote` (listed with `list`), each with its size, to the same
/// places under `local`, whose directories are made on the way. A name the server lists that
/// is not a plain file name ([`safe_name`]) is skipped with a warning and counted as refused.
/// A tree of more than [`MAX_TREE_ENTRIES`] entries is refused as a whole.
pub(crate) fn get_tree(
    remote: &str,
    local: &Path,
    output: &Output,
    mut list: impl FnMut(&str) -> Result<Vec<Entry>>,
) -> Result<Files> {
    let mut files = Files::default();
    let mut pending = vec![(String::new(), 0usize)];
    let mut taken = 0usize;
    while let Some((rel, depth)) = pending.pop() {
        let dir = local.join(&rel);
        std::fs::create_dir_all(&dir).map_err(|e| ClientError::local(&dir, e))?;
        let path = join(remote, &rel);
        let mut entries = list(&path)?;
        // Counted before any of them is queued: the error comes before another directory is
        // made.
        taken += entries.len();
        if taken > MAX_TREE_ENTRIES {
            return Err(ClientError::Limit(format!(
                "get -r {remote}: the server lists more than {MAX_TREE_ENTRIES} files and \
                 directories under it, the client's cap; nothing more was made or fetched"
            )));
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for e in entries {
            let child = match local_child(local, &rel, &e.name) {
                Ok(child) => child,
                Err(why) => {
                    output.diagnostic(format_args!("get -r {remote}: {why}"));
                    files.refused += 1;
                    continue;
                }
            };
            match e.kind {
                EntryKind::File => files.items.push((
                    Transfer::Get {
                        remote: join(remote, &child),
                        local: local.join(&child),
                    },
                    e.size,
                )),
                EntryKind::Dir if depth < MAX_DEPTH => pending.push((child, depth + 1)),
                _ => output.diagnostic(format_args!(
                    "skipping {}: not a file or directory",
                    join(remote, &child)
                )),
            }
        }
    }
    Ok(files)
}

/// `rel/name`, for a `name` the server listed in `rel` (under the destination `local`), once
/// the name is one plain component and the local path it makes stays beneath `local`.
fn local_child(local: &Path, rel: &str, name: &str) -> Result<String> {
    let child = join(rel, safe_name(name)?);
    beneath(local, &local.join(&child))?;
    Ok(child)
}

/// `mput`: the local files matching `patterns`, each with its size, to the remote directory.
pub(crate) fn mput(patterns: &[String], output: &Output) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for pattern in patterns {
        let paths = glob::glob(pattern)
            .map_err(|e| ClientError::Usage(format!("mput: bad pattern {pattern:?}: {e}")))?;
        let before = items.len();
        for path in paths.flatten() {
            if !path.is_file() {
                continue;
            }
            let size = path.metadata().map(|m| m.len()).unwrap_or(0);
            let remote = file_name(&path)?;
            items.push((
                Transfer::Put {
                    local: path,
                    remote,
                },
                size,
            ));
        }
        if items.len() == before {
            output.diagnostic(format_args!("mput: no local file matches {pattern}"));
        }
    }
    if items.is_empty() {
        return Err(ClientError::Usage("mput: nothing to send".into()));
    }
    Ok(items)
}

/// `mget`: the remote files matching `patterns` (listed with `list`), each with its size, to
/// the local directory. A matching name that is not a plain file name ([`safe_name`]) is
/// skipped with a warning and counted as refused.
pub(crate) fn mget(
    patterns: &[String],
    output: &Output,
    mut list: impl FnMut(&str) -> Result<Vec<Entry>>,
) -> Result<Files> {
    let mut files = Files::default();
    for pattern in patterns {
        let (dir, name) = match pattern.rsplit_once('/') {
            Some(("", name)) => ("/", name),
            Some((dir, name)) => (dir, name),
            None => (".", pattern.as_str()),
        };
        let matcher = glob::Pattern::new(name)
            .map_err(|e| ClientError::Usage(format!("mget: bad pattern {pattern:?}: {e}")))?;
        let mut entries = list(dir)?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let before = files.items.len() + files.refused;
        for e in entries {
            if e.kind == EntryKind::File && matcher.matches(&e.name) {
                let here = Path::new(".");
                let local = match local_child(here, "", &e.name) {
                    Ok(name) => PathBuf::from(name),
                    Err(why) => {
                        output.diagnostic(format_args!("mget {pattern}: {why}"));
                        files.refused += 1;
                        continue;
                    }
                };
                let remote = if dir == "." {
                    e.name.clone()
                } else {
                    join(dir, &e.name)
                };
                files.items.push((Transfer::Get { remote, local }, e.size));
            }
        }
        if files.items.len() + files.refused == before {
            output.diagnostic(format_args!("mget: no remote file matches {pattern}"));
        }
    }
    if files.items.is_empty() && files.refused == 0 {
        return Err(ClientError::Usage("mget: nothing to fetch".into()));
    }
    Ok(files)
}

/// `base/rel`, for remote paths (`rel` may be empty).
pub(crate) fn join(base: &str, rel: &str) -> String {
    match (base, rel) {
        (b, "") => b.to_owned(),
        ("", r) | (".", r) => r.to_owned(),
        (b, r) if b.ends_with('/') => format!("{b}{r}"),
        (b, r) => format!("{b}/{r}"),
    }
}

/// Collects a local tree: directories and files (with sizes), relative to `root`, `/`-joined.
/// Symlinks are skipped, so a loop cannot trap the walk.
fn walk_local(
    root: &Path,
    rel: &str,
    dirs: &mut Vec<String>,
    files: &mut Vec<(String, u64)>,
    output: &Output,
) -> Result<()> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| ClientError::local(&dir, e))?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let child = join(rel, &name);
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            dirs.push(child.clone());
            walk_local(root, &child, dirs, files, output)?;
        } else if ft.is_file() {
            files.push((child, e.metadata().map(|m| m.len()).unwrap_or(0)));
        } else {
            output.diagnostic(format_args!(
                "skipping {}: not a file or directory",
                e.path().display()
            ));
        }
    }
    Ok(())
}

/// The last part of `path`: the name a file gets on the other side when the user gives none.
pub(crate) fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| ClientError::Usage(format!("{}: has no file name", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins() {
        for (b, r, want) in [
            ("d", "", "d"),
            ("", "f", "f"),
            (".", "f", "f"),
            ("/", "f", "/f"),
            ("d", "f", "d/f"),
            ("d/", "f", "d/f"),
        ] {
            assert_eq!(join(b, r), want);
        }
    }
}
