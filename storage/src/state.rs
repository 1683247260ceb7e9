//! The daemon's private state directory (staging, digest records): where it lies, the checks
//! that keep it out of every home's reach, and the move from an older version's `ROOT/.ftpd`.
//!
//! The state lies outside the served tree, so no path a client types and no symlink anyone
//! plants in the root can reach it: homes resolve beneath themselves ([`cap_std::fs::Dir`]),
//! and the state is beneath no home. It must be on the root's filesystem all the same, because
//! an upload is committed by renaming (or linking) its staging file into the root, which
//! fails across filesystems (EXDEV).

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, MetadataExt as _};

use crate::{rename_noreplace, Error, Result, PRIVATE_DIR};

/// Where staged uploads live, in the state directory.
pub(crate) const STAGING: &str = "staging";
/// Where recorded digests live, in the state directory.
pub(crate) const DIGESTS: &str = "digests";
/// Where files reported damaged wait for the next scrub, in the state directory.
pub(crate) const SUSPECTS: &str = "suspects";

/// Directories walked up from one to `/` at most, looking for another: far beyond any real
/// depth (PATH_MAX is 4096 bytes), and a bound should `..` ever loop.
const MAX_DEPTH: usize = 4096;

/// The state directory used when none is given: beside the root, hidden and named after it
/// (`/srv/files` keeps its state in `/srv/.files.ftpd-state`), so that it is on the root's
/// filesystem unless the root is a mount point, outside the root, and never shared by two
/// roots in one directory.
pub fn default_state_dir(root: &Path) -> Result<PathBuf> {
    let shown = root.display().to_string();
    let root =
        std::fs::canonicalize(root).map_err(|e| Error::io(&shown, "open storage root", e))?;
    let (Some(parent), Some(name)) = (root.parent(), root.file_name()) else {
        return Err(Error::State {
            problem: StateProblem::NothingBeside,
            state: PathBuf::new(),
            root,
        });
    };
    let mut hidden = OsString::from(".");
    hidden.push(name);
    hidden.push(".ftpd-state");
    Ok(parent.join(hidden))
}

/// Why a directory cannot hold a root's private state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateProblem {
    /// It is on another filesystem than the root: commits would fail (EXDEV).
    OtherFilesystem,
    /// It is the root or lies inside it, where clients could reach it.
    InsideRoot,
    /// The root lies inside it.
    HoldsRoot,
    /// Another user owns it (it may be theirs to read and plant files in).
    NotOwned,
    /// The root is `/`: there is nothing beside it for the default.
    NothingBeside,
    /// It is a symbolic link (one planted beside the root could lead anywhere).
    Symlink,
}

impl StateProblem {
    /// One line naming both paths.
    pub(crate) fn describe(self, state: &Path, root: &Path) -> String {
        let (s, r) = (state.display(), root.display());
        match self {
            StateProblem::OtherFilesystem => format!(
                "the state directory {s} is not on the filesystem of the root {r} (uploads are \
                 committed by renaming them from one to the other)"
            ),
            StateProblem::InsideRoot => format!(
                "the state directory {s} is inside the root {r}, where clients could reach it"
            ),
            StateProblem::HoldsRoot => {
                format!("the root {r} is inside the state directory {s}")
            }
            StateProblem::NotOwned => format!(
                "the state directory {s} (for the root {r}) belongs to another user than the \
                 daemon's"
            ),
            StateProblem::Symlink => format!(
                "the state directory {s} (for the root {r}) is a symbolic link; name the \
                 directory it leads to"
            ),
            StateProblem::NothingBeside => format!(
                "the root {r} has no directory beside it to keep the daemon's state in, and every \
                 directory on its filesystem is inside it: serve a directory below it"
            ),
        }
    }
}

/// The state directory, open and checked.
pub(crate) struct State {
    /// Capability handle on the state directory.
    pub(crate) dir: Dir,
    /// Whether an older version's `ROOT/.ftpd` was moved into it just now.
    pub(crate) migrated: bool,
}

/// Opens (creating it, mode 0700) the state directory `path` for the root `root` (open at
/// `root_path`), refusing one that clients could reach or that commits could not rename out
/// of, and moves into it what an older version kept in the root's `.ftpd`.
pub(crate) fn open(root: &Dir, root_path: &Path, path: &Path) -> Result<State> {
    let shown = path.display().to_string();
    let refuse = |problem| Error::State {
        problem,
        state: path.to_owned(),
        root: root_path.to_owned(),
    };
    let root_meta = root
        .dir_metadata()
        .map_err(|e| Error::io(&root_path.display().to_string(), "stat storage root", e))?;
    let root_id = (root_meta.dev(), root_meta.ino());
    // Refused before it is made, so that a refusal leaves no directory in the root: a new
    // directory lies where its nearest existing ancestor does.
    if let Some((ancestor, ancestor_path)) = nearest_existing(path) {
        if within(&ancestor, &ancestor_path, root_id, root_path) {
            return Err(refuse(StateProblem::InsideRoot));
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::io(&shown, "create state directory", e))?;
    let dir = open_nofollow(path).map_err(|e| {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink()) {
            refuse(StateProblem::Symlink)
        } else {
            Error::io(&shown, "open state directory", e)
        }
    })?;
    let meta = dir
        .dir_metadata()
        .map_err(|e| Error::io(&shown, "stat state directory", e))?;
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(refuse(StateProblem::NotOwned));
    }
    if meta.dev() != root_meta.dev() {
        return Err(refuse(StateProblem::OtherFilesystem));
    }
    if within(&dir, path, root_id, root_path) {
        return Err(refuse(StateProblem::InsideRoot));
    }
    if within(root, root_path, (meta.dev(), meta.ino()), path) {
        return Err(refuse(StateProblem::HoldsRoot));
    }
    // Made 0700 by us; one made by someone else (systemd's StateDirectory= is 0755) is
    // tightened: the digest records and staged bytes are nobody else's to read.
    if meta.mode() & 0o077 != 0 {
        let private = rustix::fs::Mode::from_raw_mode(0o700);
        // cap-std's handle may be O_PATH, which fchmod refuses; a chmod of "." beneath it works.
        rustix::fs::chmodat(&dir, ".", private, rustix::fs::AtFlags::empty())
            .map_err(|e| Error::io(&shown, "make private the state directory", e.into()))?;
    }
    let migrated = migrate(root, &dir).map_err(|source| Error::Migrate {
        root: root_path.to_owned(),
        state: path.to_owned(),
        source,
    })?;
    Ok(State { dir, migrated })
}

/// Opens the directory `path`, refusing a symlink as its last name: the default lies beside
/// the root, in a directory others may be able to write to (`/tmp`, say), where a link planted
/// in advance would send the daemon's private state (and its chmod) wherever it leads.
fn open_nofollow(path: &Path) -> io::Result<Dir> {
    use rustix::fs::{openat, Mode, OFlags};
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Dir::open_ambient_dir(path, ambient_authority()); // `/`, `..`
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let parent = std::fs::File::open(parent)?;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = openat(&parent, name, flags, Mode::empty())?;
    Ok(Dir::from_std_file(std::fs::File::from(fd)))
}

/// `path` or its nearest ancestor that exists, opened, with its path.
fn nearest_existing(path: &Path) -> Option<(Dir, PathBuf)> {
    let absolute = std::path::absolute(path).ok()?;
    absolute.ancestors().find_map(|at| {
        let dir = Dir::open_ambient_dir(at, ambient_authority()).ok()?;
        Some((dir, at.to_owned()))
    })
}

/// Whether the directory `inner` is `outer` (its device and inode) or lies beneath it. Both
/// ways of telling are asked: the identity of every directory from `inner` up to `/`, which
/// no symlink or bind mount hides, and, should that walk fail (a directory on the way that
/// may not be searched), whether the canonical paths nest.
fn within(inner: &Dir, inner_path: &Path, outer: (u64, u64), outer_path: &Path) -> bool {
    match walk_up_finds(inner.as_fd(), outer) {
        Ok(found) => found,
        Err(_) => match (
            std::fs::canonicalize(inner_path),
            std::fs::canonicalize(outer_path),
        ) {
            (Ok(inner), Ok(outer)) => inner.starts_with(outer),
            // Cannot tell: say it nests, so that the daemon refuses rather than exposes.
            _ => true,
        },
    }
}

/// Walks `..` from `start` to `/`, looking for the directory `target` (device, inode).
fn walk_up_finds(start: impl AsFd, target: (u64, u64)) -> io::Result<bool> {
    use rustix::fs::{fstat, openat, Mode, OFlags};
    // O_PATH: only a place to go on from, so no read permission is needed on the way up.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut at: OwnedFd = openat(start, ".", flags, Mode::empty())?;
    for _ in 0..MAX_DEPTH {
        let st = fstat(&at)?;
        let here = (st.st_dev, st.st_ino);
        if here == target {
            return Ok(true);
        }
        let up = openat(&at, "..", flags, Mode::empty())?;
        let st = fstat(&up)?;
        if (st.st_dev, st.st_ino) == here {
            return Ok(false); // `/`, whose `..` is itself
        }
        at = up;
    }
    Err(io::Error::other("too deep"))
}

/// Moves an older version's private directory `ROOT/.ftpd` (its `staging` and `digests`) into
/// the state directory with renames, merging into what is already there (the state's own
/// copy of a name is the newer one), and removes it. Returns whether there was one to move.
/// Safe to trust: no client can create `.ftpd` at the top of a home (see `VPath::resolve`), so
/// what is found there is an older daemon's, or the operator's.
fn migrate(root: &Dir, state: &Dir) -> io::Result<bool> {
    match root.symlink_metadata(PRIVATE_DIR) {
        Ok(meta) if meta.is_dir() => {}
        // Not something an older version made: left alone, and still out of clients' reach.
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    let old = root.open_dir(PRIVATE_DIR)?;
    // `suspects` too: none of an older version's, but a state directory put back in the root's
    // place by hand has one, and `.ftpd` must end empty.
    for sub in [STAGING, DIGESTS, SUSPECTS] {
        match old.symlink_metadata(sub) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => continue, // left in place: removing `.ftpd` below then fails and says so
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        // Whole, in one rename, when the state has none yet.
        let whole = rename_noreplace(&old, sub, state, sub, || old.rename(sub, state, sub));
        match whole {
            Ok(()) => continue,
            Err(e)
                if e.kind() == io::ErrorKind::AlreadyExists
                    || e.kind() == io::ErrorKind::DirectoryNotEmpty => {}
            Err(e) => return Err(e),
        }
        let (from, to) = (old.open_dir(sub)?, state.open_dir(sub)?);
        for entry in from.entries()? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else {
                from.remove_file(&name)?; // no name the daemon makes
                continue;
            };
            let moved =
                rename_noreplace(&from, name, &to, name, || match to.symlink_metadata(name) {
                    Ok(_) => Err(io::ErrorKind::AlreadyExists.into()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => from.rename(name, &to, name),
                    Err(e) => Err(e),
                });
            match moved {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => from.remove_file(name)?,
                Err(e) => return Err(e),
            }
        }
        old.remove_dir(sub)?;
    }
    root.remove_dir(PRIVATE_DIR)?;
    Ok(true)
}
