//! Local-file policy: the `.ftp-part` and placing it, stable upload ids, hashing what is on disk.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use md5::{Digest as _, Md5};
use protocol::{DigestKind, Hasher};

use crate::error::{ClientError, Result};

/// Where a download is written until it is verified.
pub fn part_path(local: &Path) -> PathBuf {
    let mut name = local.file_name().unwrap_or_default().to_owned();
    name.push(".ftp-part");
    local.with_file_name(name)
}

/// Moves a verified download into place; without `overwrite`, never over an existing file.
pub(super) fn place(part: &Path, local: &Path, overwrite: bool) -> Result<()> {
    let result = if overwrite {
        std::fs::rename(part, local)
    } else {
        std::fs::hard_link(part, local).and_then(|()| std::fs::remove_file(part))
    };
    result.map_err(|e| {
        let _ = std::fs::remove_file(part);
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            ClientError::LocalExists(format!("{}: already exists", local.display()))
        } else {
            ClientError::local(local, e)
        }
    })
}

/// The client's stable name for uploading this file to `remote`: the same file (path, size,
/// modification time) to the same place gets the same id, so a later `put -c` finds its bytes.
pub(super) fn upload_id(local: &Path, meta: &std::fs::Metadata, remote: &str) -> String {
    let path = std::fs::canonicalize(local).unwrap_or_else(|_| local.to_owned());
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let digest = Md5::new()
        .chain_update(path.as_os_str().as_encoded_bytes())
        .chain_update([0])
        .chain_update(meta.len().to_be_bytes())
        .chain_update(mtime.to_be_bytes())
        .chain_update(remote.as_bytes())
        .finalize();
    hex::encode(digest)
}

pub(super) fn mtime_of(meta: &std::fs::Metadata) -> Option<i64> {
    let t = meta.modified().ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64)
}

/// A clone of `file` positioned at `len`, with the digest of its first `len` bytes.
pub(super) async fn hash_prefix_of(
    file: &File,
    path: &Path,
    len: u64,
    kind: DigestKind,
) -> Result<(File, Hasher)> {
    let mut file = file.try_clone().map_err(|e| ClientError::local(path, e))?;
    let shown = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(0))?;
        let mut hasher = Hasher::new(kind);
        if hasher.update_from(&mut file, len)? < len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok((file, hasher))
    })
    .await
    .map_err(|e| ClientError::Internal(format!("hashing failed: {e}")))?
    .map_err(|e| ClientError::local(&shown, e))
}

pub(super) fn remove_if_empty(path: &Path) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_files_sit_next_to_the_target() {
        assert_eq!(
            part_path(Path::new("d/a.bin")),
            Path::new("d/a.bin.ftp-part")
        );
    }
}
