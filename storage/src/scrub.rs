//! Scrubbing: every stored file read again and compared with the digests recorded at its upload,
//! as a ZFS scrub does, to find bytes that rotted on disk; and re-recording a file an admin
//! changed on purpose.
//!
//! A record describes a file only while it keeps its inode, size, modification and change
//! times. Bit rot changes none of them, so a file that still matches its stamp but not its
//! digest is *damaged*. A file changed through the file system (even with its size and mtime put
//! back) has a new change time, which voids its record: it is *unverifiable*, not damaged, since
//! nothing says whether the change was meant. `ftpd rerecord` is how an admin says it was.
//!
//! Files are opened beneath the root's capability handle with `O_NOFOLLOW`, so no symlink leads
//! a scrub out of the root, and read in 1 MiB blocks whatever their size.
//!
//! A client whose download failed against the recorded digests reports the file; it is marked
//! a *suspect* (one small file per path in the state directory's `suspects`, at most
//! [`MAX_SUSPECTS`]) and the next scrub checks the suspects first, then clears the marks it
//! resolved. Marks are files of their own, so the daemon and an admin's `ftpd scrub` can add
//! and clear them at once without a lock.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};

use cap_std::fs::{Dir, OpenOptionsExt as _};
use checksum::{Digest, DigestKind, Hasher};

use crate::digests::{self, Recorded, StampSource as _};
use crate::{Error, Home, Result, Root, VPath, PRIVATE_DIR};

/// Files marked for the next scrub, at most: reports beyond it are counted but not kept (a
/// client cannot fill the state directory), and the scrub itself finds those files anyway.
pub const MAX_SUSPECTS: usize = 10_000;

/// What a scrub found about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its bytes are still the ones recorded at upload.
    Intact,
    /// Its stamp matches its record but its bytes do not: they changed under the file system.
    Damaged {
        /// Byte offset of the first chunk whose running digest differs, when chunks were kept.
        from: Option<u64>,
    },
    /// No valid record to compare with, or the file could not be read; the reason says which.
    Unverifiable(&'static str),
    /// A suspect that is no longer there (removed or renamed since it was reported).
    Gone,
}

impl Verdict {
    /// Whether a suspect with this verdict is settled, its mark to be cleared: it was read to
    /// its end (intact or damaged), it is gone, or it has no record to check it with. A file
    /// that could not be opened or read, or changed while read, stays marked for the next try.
    pub fn settles(&self) -> bool {
        match self {
            Verdict::Intact | Verdict::Damaged { .. } | Verdict::Gone => true,
            Verdict::Unverifiable(why) => *why == NO_RECORD || *why == NOT_A_FILE,
        }
    }
}

/// Why a file is unverifiable: it has no record that describes it as it is now.
const NO_RECORD: &str = "no valid record";
/// Why a file is unverifiable: it is not a regular file.
const NOT_A_FILE: &str = "not a regular file";

/// What reporting a file damaged did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// It is marked for the next scrub now.
    New,
    /// It was marked already (reported before, and no scrub has looked at it since).
    Already,
    /// [`MAX_SUSPECTS`] files are marked already: not kept.
    Full,
    /// It has no record to check it against (changed through the file system, or never
    /// uploaded): a download of it cannot have failed against one.
    Unrecorded,
}

/// A file reported damaged, waiting for a scrub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspect {
    /// The file, in the root.
    pub path: VPath,
    /// Where its first failing chunk starts, as the report said.
    pub offset: Option<u64>,
}

/// A suspect's mark as stored: the path relative to the root.
#[derive(serde::Serialize, serde::Deserialize)]
struct Mark {
    /// The file, relative to the root.
    path: String,
    /// Where its first failing chunk starts, as the report said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
}

/// The name of `path`'s mark: one per path, so a second report of it finds the first.
fn mark_name(path: &VPath) -> String {
    use md5::Digest as _;
    format!(
        "{}.json",
        hex::encode(md5::Md5::digest(path.rel().as_bytes()))
    )
}

/// One file a scrub looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scrubbed {
    /// The file's path relative to the root, with a leading `/`.
    pub path: String,
    pub verdict: Verdict,
}

impl Home {
    /// Marks the file at `path` in this home for the next scrub, as a client reported it
    /// damaged: only a regular file (never followed through a symlink) that still has its
    /// record. The work is bounded whatever the file's size: a stat, the record's read, a count
    /// of the marks (at most [`MAX_SUSPECTS`]) and a small write.
    pub fn report_damaged(&self, path: &VPath, offset: Option<u64>) -> Result<Marked> {
        let shown = path.to_string();
        let meta = self
            .dir
            .symlink_metadata(path.rel())
            .map_err(|e| Error::io(&shown, "stat", e))?;
        if meta.is_dir() {
            return Err(Error::IsDirectory(shown));
        }
        if !meta.is_file() {
            return Err(Error::NotAFile(shown));
        }
        let in_root = self.in_root(path);
        if digests::load_stamped(&self.root.inner.digests, &in_root, &meta).is_none() {
            return Ok(Marked::Unrecorded);
        }
        self.root
            .mark_suspect(&in_root, offset)
            .map_err(|e| Error::io(&shown, "mark", e))
    }

    /// Reads the file at `path` in this home now and checks it against its record, as a scrub
    /// would (the caller bounds how many such reads run at once).
    pub fn check_against_record(&self, path: &VPath) -> Verdict {
        self.root.check_path(&self.in_root(path))
    }

    /// `path` in this home as the root knows it (for logs an admin reads).
    pub fn root_path(&self, path: &VPath) -> VPath {
        self.in_root(path)
    }
}

impl Root {
    /// Marks `path` (in the root) for the next scrub; a path marked already keeps its mark.
    fn mark_suspect(&self, path: &VPath, offset: Option<u64>) -> std::io::Result<Marked> {
        let dir = &self.inner.suspects;
        let name = mark_name(path);
        if dir.symlink_metadata(&name).is_ok() {
            return Ok(Marked::Already);
        }
        if dir.entries()?.take(MAX_SUSPECTS).count() >= MAX_SUSPECTS {
            return Ok(Marked::Full);
        }
        let mark = Mark {
            path: path.rel().to_owned(),
            offset,
        };
        let json = serde_json::to_vec(&mark).map_err(std::io::Error::other)?;
        let mut opts = cap_std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        match dir.open_with(&name, &opts) {
            Ok(file) => {
                let written = std::io::Write::write_all(&mut file.into_std(), &json);
                if written.is_err() {
                    let _ = dir.remove_file(&name);
                }
                written.map(|()| Marked::New)
            }
            // Two reports at once: the other one marked it.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Marked::Already),
            Err(e) => Err(e),
        }
    }

    /// The files reported damaged and not settled by a scrub yet, in path order (at most
    /// [`MAX_SUSPECTS`]; a mark that does not parse is dropped).
    pub fn suspects(&self) -> Vec<Suspect> {
        let dir = &self.inner.suspects;
        let Ok(entries) = dir.entries() else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for entry in entries.flatten().take(MAX_SUSPECTS) {
            let name = entry.file_name();
            // Marks are tiny; anything larger is not one of ours.
            let mark = entry
                .metadata()
                .ok()
                .filter(|m| m.is_file() && m.len() <= 64 * 1024)
                .and_then(|_| dir.read(&name).ok())
                .and_then(|json| serde_json::from_slice::<Mark>(&json).ok());
            match mark {
                Some(mark) => found.push(Suspect {
                    path: VPath::from_rel(&mark.path),
                    offset: mark.offset,
                }),
                None => {
                    let _ = dir.remove_file(&name);
                }
            }
        }
        found.sort_by(|a, b| a.path.rel().cmp(b.path.rel()));
        found
    }

    /// Clears the mark of `path` (in the root), if it has one.
    pub fn clear_suspect(&self, path: &VPath) {
        let _ = self.inner.suspects.remove_file(mark_name(path));
    }

    /// Reads the file at `path` (in the root) and checks it against its record: [`Verdict::Gone`]
    /// when nothing is there any more.
    pub fn check_path(&self, path: &VPath) -> Verdict {
        match self.inner.dir.symlink_metadata(path.rel()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Verdict::Gone,
            Err(_) => Verdict::Unverifiable("cannot stat"),
            Ok(m) if !m.is_file() => Verdict::Unverifiable(NOT_A_FILE),
            Ok(_) => check(&self.inner.dir, path.rel(), path, &self.inner.digests),
        }
    }

    /// Every regular file in the root, each read and checked against its record, one at a time
    /// as the iterator is driven. Symlinks and special files are skipped, never followed or
    /// opened; directories that cannot be read are reported as unverifiable.
    pub fn scrub(&self) -> impl Iterator<Item = Scrubbed> + '_ {
        self.scrub_except(HashSet::new())
    }

    /// [`Root::scrub`], leaving out the files named in `done` (paths with a leading `/`, as
    /// [`Scrubbed::path`]): the suspects a scrub checked first.
    pub fn scrub_except(&self, done: HashSet<String>) -> impl Iterator<Item = Scrubbed> + '_ {
        let mut stack = vec![VPath::root()];
        let mut pending: Vec<Scrubbed> = Vec::new();
        std::iter::from_fn(move || loop {
            if let Some(done) = pending.pop() {
                return Some(done);
            }
            let dir_path = stack.pop()?;
            let dir = if dir_path.is_root() {
                self.inner.dir.try_clone()
            } else {
                open_dir_nofollow(&self.inner.dir, dir_path.rel())
            };
            let entries = dir.and_then(|d| d.entries().map(|e| (d, e)));
            let Ok((dir, entries)) = entries else {
                pending.push(Scrubbed {
                    path: dir_path.to_string(),
                    verdict: Verdict::Unverifiable("directory unreadable"),
                });
                continue;
            };
            let mut files = Vec::new();
            for entry in entries.flatten() {
                let name: String = match entry.file_name().into_string() {
                    Ok(name) => name,
                    Err(_) => continue,
                };
                if dir_path.is_root() && name.as_str() == PRIVATE_DIR {
                    continue;
                }
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let path = dir_path.join(&VPath::from_rel(&name));
                if kind.is_dir() {
                    stack.push(path);
                } else if kind.is_file() {
                    files.push((name, path));
                }
            }
            // Sorted, and popped from the end: a directory's files come out in name order.
            files.sort_by(|a, b| b.0.cmp(&a.0));
            for (name, path) in files {
                if done.contains(&path.to_string()) {
                    continue;
                }
                let verdict = check(&dir, &name, &path, &self.inner.digests);
                pending.push(Scrubbed {
                    path: path.to_string(),
                    verdict,
                });
            }
        })
    }

    /// Hashes the file at `path` (relative to the root) now and records that as its digest,
    /// for a file an admin changed on purpose. The digest is of `kind`; no chunk digests are
    /// kept (downloads of it hash as they send, as for a resumed upload).
    pub fn rerecord(&self, path: &VPath, kind: DigestKind) -> Result<Digest> {
        let shown = path.to_string();
        let mut file =
            open_nofollow(&self.inner.dir, path.rel()).map_err(|e| Error::io(&shown, "open", e))?;
        let before = file.metadata().map_err(|e| Error::io(&shown, "stat", e))?;
        if !before.is_file() {
            return Err(Error::NotAFile(shown));
        }
        let mut hasher = Hasher::new(kind);
        hasher
            .update_from(&mut file, u64::MAX)
            .map_err(|e| Error::io(&shown, "read", e))?;
        let after = file.metadata().map_err(|e| Error::io(&shown, "stat", e))?;
        if before.stamp() != after.stamp() {
            return Err(Error::io(
                &shown,
                "hash",
                std::io::Error::other("the file changed while it was read"),
            ));
        }
        let digest = hasher.finish();
        let rec = Recorded::new(path, &after, 0, Vec::new(), digest);
        digests::save_checked(&self.inner.digests, &rec)
            .map_err(|e| Error::io(&shown, "record", e))?;
        // Recorded afresh: a report against the old record is settled.
        self.clear_suspect(path);
        Ok(digest)
    }

    /// Test support: rot the byte at `offset` of the file at `path` as a disk would, leaving
    /// its record describing it (the record rewritten with the file's new stamp, its digests
    /// kept). Not for use outside tests.
    #[doc(hidden)]
    pub fn rot_byte_for_tests(&self, path: &VPath, offset: u64) -> Result<()> {
        use std::io::Write;
        let shown = path.to_string();
        let io = |e| Error::io(&shown, "rot", e);
        let meta = self.inner.dir.metadata(path.rel()).map_err(io)?;
        let rec = digests::load_stamped(&self.inner.digests, path, &meta)
            .ok_or_else(|| io(std::io::Error::other("no valid record")))?;
        let mut opts = cap_std::fs::OpenOptions::new();
        opts.read(true).write(true);
        let mut file = self
            .inner
            .dir
            .open_with(path.rel(), &opts)
            .map_err(io)?
            .into_std();
        let mut byte = [0u8];
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        file.read_exact(&mut byte).map_err(io)?;
        byte[0] ^= 0x01;
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        file.write_all(&byte).map_err(io)?;
        file.set_modified(meta.modified().map_err(io)?.into_std())
            .map_err(io)?;
        let now = file.metadata().map_err(io)?;
        let rotted = Recorded::new(path, &now, rec.chunk, rec.chunks, rec.digest);
        digests::save_checked(&self.inner.digests, &rotted).map_err(io)
    }
}

/// Opens `name` beneath `dir` for reading, never following a symlink in its last component
/// (cap-std refuses one leading out of `dir` anyway), never blocking on a FIFO swapped in.
fn open_nofollow(dir: &Dir, name: &str) -> std::io::Result<std::fs::File> {
    let mut opts = cap_std::fs::OpenOptions::new();
    opts.read(true).custom_flags(
        (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY)
            .bits() as i32,
    );
    Ok(dir.open_with(name, &opts)?.into_std())
}

/// Opens the directory `name` beneath `dir`, refusing a symlink in its last component.
fn open_dir_nofollow(dir: &Dir, name: &str) -> std::io::Result<Dir> {
    let mut opts = cap_std::fs::OpenOptions::new();
    opts.read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::DIRECTORY).bits() as i32);
    Ok(Dir::from_std_file(dir.open_with(name, &opts)?.into_std()))
}

/// Reads the file `name` in `dir` (at `path` in the root) and compares it with its record.
fn check(dir: &Dir, name: &str, path: &VPath, records: &Dir) -> Verdict {
    let Ok(mut file) = open_nofollow(dir, name) else {
        return Verdict::Unverifiable("cannot open");
    };
    let Ok(before) = file.metadata() else {
        return Verdict::Unverifiable("cannot stat");
    };
    if !before.is_file() {
        return Verdict::Unverifiable(NOT_A_FILE);
    }
    let Some(rec) = digests::load(records, path, &before) else {
        return Verdict::Unverifiable(NO_RECORD);
    };
    let verdict = match compare(&mut file, &rec) {
        Ok(v) => v,
        Err(_) => return Verdict::Unverifiable("read failed"),
    };
    // Changed while read (an upload replacing it, an admin's edit): what was read proves
    // nothing either way.
    match file.metadata() {
        Ok(after) if after.stamp() == before.stamp() => verdict,
        _ => Verdict::Unverifiable("changed while scrubbed"),
    }
}

/// Hashes `file` from its start with the record's digest kind, chunk by chunk when the chunks'
/// running digests were kept (to say where damage starts).
fn compare(file: &mut std::fs::File, rec: &Recorded) -> std::io::Result<Verdict> {
    let mut hasher = Hasher::new(rec.digest.kind());
    let mut first_bad = None;
    if rec.has_chunks() {
        let chunk = u64::from(rec.chunk);
        for (i, want) in rec.chunks.iter().enumerate() {
            hasher.update_from(file, chunk)?;
            if first_bad.is_none() && hasher.digest() != *want {
                first_bad = Some(i as u64 * chunk);
            }
        }
    }
    hasher.update_from(file, u64::MAX)?;
    if hasher.digest() == rec.digest && first_bad.is_none() {
        Ok(Verdict::Intact)
    } else {
        Ok(Verdict::Damaged { from: first_bad })
    }
}
