//! Local-file policy: names from the server made safe, the `.ftp-part` and placing it, stable
//! upload ids, hashing what is on disk.

use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use md5::{Digest as _, Md5};
use protocol::{DigestKind, Hasher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Progress;
use crate::error::{ClientError, Result};

/// Prefixes at least this long are hashed with a progress bar; shorter ones take well under a
/// tenth of a second, and a bar would only flicker.
const HASH_PROGRESS_MIN: u64 = 16 << 20;

/// `name`, a name the server sent (a listing entry), if it can be used as one component of a
/// local path: not empty, `.` or `..`, no separator (`/`, or `\` that another platform takes
/// for one), no NUL or other control character, no bidirectional control ([`protocol::text::is_bidi_control`]),
/// and one plain component to this platform's `Path` too. Anything else is how a hostile server
/// (or anyone on the path) would make the client write outside the directory it was told to
/// write in, draw on the user's terminal, or name a file that reads as another
/// (`invoice\u{202e}fdp.exe` shows as `invoiceexe.pdf`); the daemon refuses the same in its
/// paths.
pub fn safe_name(name: &str) -> Result<&str> {
    let plain = !matches!(name, "" | "." | "..")
        && !name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control() || protocol::text::is_bidi_control(c))
        && matches!(
            Path::new(name).components().collect::<Vec<_>>()[..],
            [Component::Normal(n)] if n == name
        );
    if plain {
        Ok(name)
    } else {
        Err(ClientError::UnsafeName(name.to_owned()))
    }
}

/// `path`, if it lies strictly beneath `dest` once both are normalised lexically (`.` dropped,
/// `..` taking away the component before it); either may be relative (to the same directory).
/// The last line of defence after [`safe_name`]: a local path built from names the server sent
/// must never leave the destination the user chose.
pub fn beneath<'p>(dest: &Path, path: &'p Path) -> Result<&'p Path> {
    let (d, p) = (normalise(dest), normalise(path));
    // What is left past `dest` must go down: a leading `..` (or root) there means `dest` was
    // empty or relative, and the path climbs out of it.
    let down = p.strip_prefix(&d).is_ok_and(|rest| {
        rest.components().next().is_some()
            && rest.components().all(|c| matches!(c, Component::Normal(_)))
    });
    if down {
        Ok(path)
    } else {
        Err(ClientError::UnsafeName(path.display().to_string()))
    }
}

/// `path` without `.` components and with each `..` cancelling the component before it (a
/// leading `..`, or one after the root, is kept, or dropped, as the filesystem would take it).
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(".."),
            },
            other => out.push(other),
        }
    }
    out
}

/// Where a download is written until it is verified.
pub fn part_path(local: &Path) -> PathBuf {
    let mut name = local.file_name().unwrap_or_default().to_owned();
    name.push(".ftp-part");
    local.with_file_name(name)
}

/// How [`open_local`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// To hash it: a partial copy that may turn out complete needs no write access.
    Read,
    /// To read and write what is there.
    Write,
    /// To read and write it, made if missing.
    Create,
}

/// Opens `path`, a download's `.ftp-part` or the partial copy that becomes one, never through
/// a symlink (`O_NOFOLLOW`: someone who can write the directory could point it at a file of
/// the user's elsewhere) and never blocking on a FIFO (`O_NONBLOCK`, which does nothing to a
/// regular file). Anything but a regular file is refused, and so, to write, is one with
/// another hard link, whose bytes would change under that name too. Never truncates: what it
/// opened is checked first.
pub(super) fn open_local(path: &Path, access: Access) -> Result<File> {
    use rustix::fs::OFlags;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let refuse = |why: &str| ClientError::Local {
        path: path.display().to_string(),
        source: std::io::Error::other(format!("{why}; not used for the download")),
    };
    let flags = (OFlags::NOFOLLOW | OFlags::NONBLOCK).bits();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(access != Access::Read)
        .create(access == Access::Create)
        .custom_flags(flags as i32)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                refuse("a symlink, not a regular file")
            } else {
                ClientError::local(path, e)
            }
        })?;
    let meta = file.metadata().map_err(|e| ClientError::local(path, e))?;
    if !meta.is_file() {
        return Err(refuse("not a regular file"));
    }
    if access != Access::Read && meta.nlink() > 1 {
        return Err(refuse("a file with other hard links"));
    }
    Ok(file)
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

/// What hashing a local prefix needs besides the file: the digest, and how the user sees it
/// and stops it.
pub(super) struct HashJob<'a> {
    /// The session's digest.
    pub kind: DigestKind,
    /// The name the progress bar shows (the remote file the prefix is checked against).
    pub name: &'a str,
    /// Where progress goes, for a prefix long enough to take a while.
    pub progress: &'a mut dyn Progress,
    /// Cancelled when the user presses Ctrl-C: hashing stops at once.
    pub cancel: &'a CancellationToken,
}

/// A clone of `file` positioned at `len`, with the digest of its first `len` bytes. A long
/// prefix shows progress; a cancelled `job` returns [`ClientError::Cancelled`] at once, and
/// the disk thread stops after the block it is reading.
pub(super) async fn hash_prefix_of(
    file: &File,
    path: &Path,
    len: u64,
    job: HashJob<'_>,
) -> Result<(File, Hasher)> {
    let mut file = file.try_clone().map_err(|e| ClientError::local(path, e))?;
    let shown = path.to_owned();
    let kind = job.kind;
    // Each block hashed is reported here; the thread stops once nobody listens.
    let (tx, mut rx) = mpsc::channel::<u64>(16);
    let mut hashing = tokio::task::spawn_blocking(move || {
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(0))?;
        let mut hasher = Hasher::new(kind);
        let mut heard = true;
        let done = hasher.update_from_each(&mut file, len, |n| {
            heard = tx.blocking_send(n).is_ok();
            heard
        })?;
        if !heard {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        if done < len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok((file, hasher))
    });
    let shown_progress = len >= HASH_PROGRESS_MIN;
    if shown_progress {
        job.progress
            .start(&format!("checking {}", job.name), len, 0);
    }
    let result = loop {
        tokio::select! {
            biased;
            () = job.cancel.cancelled() => break Err(ClientError::Cancelled),
            n = rx.recv() => match n {
                Some(n) if shown_progress => job.progress.advance(n),
                Some(_) => {}
                None => break (&mut hashing)
                    .await
                    .map_err(|e| ClientError::Internal(format!("hashing failed: {e}")))
                    .and_then(|r| r.map_err(|e| ClientError::local(&shown, e))),
            },
        }
    };
    // On a cancel, dropping `rx` stops the thread after its current block; nobody waits for it.
    drop(rx);
    if shown_progress {
        job.progress.finish();
    }
    result
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
    fn safe_names() {
        for ok in [
            "a", "a.txt", ".hidden", "..a", "a..", "a b", "ünï", "-x", "a:b",
        ] {
            assert_eq!(safe_name(ok).ok(), Some(ok), "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "/",
            "/abs/path",
            "../x",
            "../../x",
            "a/b",
            "a/",
            "a\\b",
            "..\\x",
            "a\0b",
            "\n",
            "a\x1b[2J",
            "tab\there",
            "del\u{7f}",
            "nel\u{85}",
            "csi\u{9b}2J",
            "txt.\u{202e}exe",
            "a\u{202a}b",
            "a\u{2066}b",
            "a\u{2069}b",
            "lrm\u{200e}",
            "rlm\u{200f}",
            "alm\u{61c}",
        ] {
            assert!(
                matches!(safe_name(bad), Err(ClientError::UnsafeName(n)) if n == bad),
                "{bad:?} was taken as safe"
            );
        }
    }

    #[test]
    fn beneath_the_destination() {
        for (dest, path, ok) in [
            ("dl", "dl/a", true),
            ("dl", "dl/a/b", true),
            ("./dl", "dl/a", true),
            ("dl/", "./dl/./a", true),
            (".", "a", true),
            ("", "a", true),
            ("/tmp/dl", "/tmp/dl/a", true),
            ("../dl", "../dl/a", true),
            ("dl", "dl", false),
            ("dl", "dl/.", false),
            ("dl", "dl/..", false),
            ("dl", "dl/../x", false),
            ("dl", "dl/a/../../x", false),
            ("dl", "dlx/a", false),
            ("dl", "/etc/passwd", false),
            (".", "..", false),
            (".", "../x", false),
            ("", "/x", false),
            ("/tmp/dl", "/tmp/dl/../x", false),
            ("/", "/../x", true),
        ] {
            let got = beneath(Path::new(dest), Path::new(path)).is_ok();
            assert_eq!(got, ok, "{path:?} beneath {dest:?}");
        }
    }

    #[test]
    fn part_files_sit_next_to_the_target() {
        assert_eq!(
            part_path(Path::new("d/a.bin")),
            Path::new("d/a.bin.ftp-part")
        );
    }
}
