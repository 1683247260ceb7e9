//! The contract every [`Backend`] keeps, as test cases to run against each one: the local
//! root's behaviour, which the daemon and its clients were written against, is the reference.
//!
//! Each case is a `pub async fn` taking the backend and panicking with a message that says
//! what was expected when the backend does otherwise; [`all`] runs them one after another,
//! each within a timeout. Each case works in a directory of its own (a fresh name beneath the
//! top), so cases can share one backend and leave nothing in each other's way, but they are
//! run one at a time: [`abort_leaves_nothing`] compares what the store holds before and after,
//! and [`home_quota`] sets the limits of homes (replacing any the backend had).
//!
//! Uploads go as the transfer engine sends them: chunks of [`CHUNK`] bytes, each with the
//! running digest (MD5) of the file through its end, then the whole file's digest.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use checksum::{Digest, DigestKind, Hasher};
use futures::{FutureExt as _, StreamExt as _};

use crate::{
    Backend, ChunkDigests, Error, FileInfo, FileKind, HomeLimits, Reading, UploadRequest, VPath,
    Writing, MAX_SIZE, PRIVATE_DIR,
};

/// Checks that `r` is an error matching `pat`; the rest says what was tried.
macro_rules! refused {
    ($r:expr, $pat:pat, $($what:tt)+) => {
        match $r {
            Err($pat) => {}
            Err(e) => panic!(
                "{}: refused with {e:?}, expected {}",
                format!($($what)+),
                stringify!($pat)
            ),
            Ok(_) => panic!("{}: succeeded, expected {}", format!($($what)+), stringify!($pat)),
        }
    };
}

/// The chunk length of the uploads: the transfer engine's default.
pub const CHUNK: usize = 1 << 20;

const MIB: usize = 1 << 20;

/// The modification time every upload asks for, to see it kept.
const MTIME: i64 = 1_600_000_000;

/// Runs every case against `backend`, in turn.
pub async fn all(backend: Arc<dyn Backend>) {
    let b = &backend;
    assert!(
        !b.location().is_empty(),
        "a backend says where its files are"
    );
    run("round_trips", round_trips(b.clone())).await;
    run("odd_names", odd_names(b.clone())).await;
    run("listings", listings(b.clone())).await;
    run("directories", directories(b.clone())).await;
    run("renames", renames(b.clone())).await;
    run("no_clobber", no_clobber(b.clone())).await;
    run("invisible_until_commit", invisible_until_commit(b.clone())).await;
    run("resume_after_drop", resume_after_drop(b.clone()).map(drop)).await;
    run("abort_leaves_nothing", abort_leaves_nothing(b.clone())).await;
    run("home_view", home_view(b.clone())).await;
    run("size_limits", size_limits(b.clone())).await;
    run("home_quota", home_quota(b.clone())).await;
}

/// Runs one case, naming it when it fails. (A time limit is the caller's: this crate has no
/// runtime, so no timer.)
async fn run(name: &str, case: impl Future<Output = ()>) {
    let case = std::panic::AssertUnwindSafe(case).catch_unwind();
    if let Err(panic) = case.await {
        eprintln!("contract case {name} failed");
        std::panic::resume_unwind(panic)
    }
}

// --- The cases -------------------------------------------------------------------------------

/// Files of 0 B, 1 B, around the 5 and 8 MiB boundaries that object stores cut parts at, and
/// 20 MiB + 7 come back whole and from an offset, with their size, modification time and the
/// running digests their chunks carried.
pub async fn round_trips(b: Arc<dyn Backend>) {
    let dir = case_dir(&b, "round-trips").await;
    let sizes = [0, 1, 5 * MIB, 8 * MIB, 8 * MIB + 1, 20 * MIB + 7];
    for (i, size) in sizes.into_iter().enumerate() {
        let path = dir.join(&p(&format!("f{size}")));
        let data = pattern(size, i as u8);
        let running = put(&b, &path, &data, false).await;
        let info = stat(&b, &path).await;
        assert_eq!(
            (info.kind, info.size),
            (FileKind::File, size as u64),
            "stat {path}"
        );
        assert_eq!(info.mtime, Some(MTIME), "stat {path}: the mtime asked for");
        let r = read(&b, &path, 0).await;
        assert_eq!(r.size, size as u64, "read {path}: size");
        assert_eq!(r.mtime, Some(MTIME), "read {path}: the mtime asked for");
        recorded_as_sent(&path, r.recorded.clone(), &running, &data);
        same(&format!("read {path}"), &body(r).await, &data);
        for offset in [1, size / 2 + 3, CHUNK, size] {
            let offset = offset.min(size);
            let r = read(&b, &path, offset as u64).await;
            assert_eq!(r.size, size as u64, "read {path} from {offset}: size");
            same(
                &format!("read {path} from {offset}"),
                &body(r).await,
                &data[offset..],
            );
        }
        refused!(
            b.read(&path, size as u64 + 1).await,
            Error::PastEnd { .. },
            "read {path} from past its end"
        );
    }
}

/// Names with spaces, unicode, URL and query metacharacters, and 200 bytes long are stored,
/// listed and read as given.
pub async fn odd_names(b: Arc<dyn Backend>) {
    let dir = case_dir(&b, "odd-names").await;
    let long = format!("{}{}", "é".repeat(50), "x".repeat(100));
    assert_eq!(long.len(), 200);
    let names = [
        "with space",
        " leading and trailing ",
        "ünïcødé ✓ 日本語",
        "#?%+&=",
        "%2F%00%25",
        "a;b,c'd\"e",
        "~tilde*star[1]",
        long.as_str(),
    ];
    for (i, name) in names.iter().enumerate() {
        let path = dir.join(&p(name));
        let data = pattern(100 + i, i as u8);
        put(&b, &path, &data, false).await;
        assert_eq!(stat(&b, &path).await.name, path.to_string(), "stat {path}");
        same(
            &format!("read {path}"),
            &body(read(&b, &path, 0).await).await,
            &data,
        );
    }
    let mut want: Vec<&str> = names.to_vec();
    want.sort();
    assert_eq!(names_in(&b, &dir).await, want, "list {dir}");

    let odd_dir = dir.join(&p("dir #?% ü"));
    mkdir(&b, &odd_dir, false).await;
    let inner = odd_dir.join(&p("in & out"));
    put(&b, &inner, b"inner", false).await;
    assert_eq!(names_in(&b, &odd_dir).await, ["in & out"], "list {odd_dir}");
    same(
        &format!("read {inner}"),
        &body(read(&b, &inner, 0).await).await,
        b"inner",
    );
}

/// A listing holds files and directories, sorted by name (a directory `d` before a file
/// `d-1`, though `d/` sorts after it), with their kinds and sizes; `max` bounds it; nothing
/// beneath a subdirectory, no upload in progress or interrupted, and none of the daemon's
/// private names appear.
pub async fn listings(b: Arc<dyn Backend>) {
    let dir = case_dir(&b, "listings").await;
    let files: &[(&str, usize)] = &[("b", 3), ("a", 1), ("c c", 0), ("d-1", 2), ("d.txt", 4)];
    for (name, len) in files {
        put(&b, &dir.join(&p(name)), &pattern(*len, 1), false).await;
    }
    for name in ["sub", "d", "d0"] {
        mkdir(&b, &dir.join(&p(name)), false).await;
    }
    put(&b, &dir.join(&p("sub/inner")), b"x", false).await;
    put(&b, &dir.join(&p("d/inner")), b"y", false).await;
    // One upload in progress, one interrupted and kept for a resume: neither is listed.
    let pending = dir.join(&p("pending"));
    let mut open = begin(&b, &pending, &with_id(2 * MIB as u64, "contract-pending")).await;
    send(
        &mut open,
        &pattern(MIB, 2),
        &mut Hasher::new(DigestKind::Md5),
    )
    .await;
    let dropped = dir.join(&p("dropped"));
    let mut gone = begin(&b, &dropped, &with_id(2 * MIB as u64, "contract-dropped")).await;
    send(
        &mut gone,
        &pattern(MIB, 3),
        &mut Hasher::new(DigestKind::Md5),
    )
    .await;
    drop(gone);

    let want = ["a", "b", "c c", "d", "d-1", "d.txt", "d0", "sub"];
    let listed = list(&b, &dir, 100).await;
    let names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, want, "list {dir}: sorted by name, nothing else");
    for e in &listed {
        let file = files.iter().find(|(n, _)| *n == e.name);
        match file {
            Some((_, len)) => assert_eq!(
                (e.kind, e.size),
                (FileKind::File, *len as u64),
                "list {dir}: {}",
                e.name
            ),
            None => assert_eq!(e.kind, FileKind::Dir, "list {dir}: {}", e.name),
        }
    }
    for max in [0, 1, 3, want.len()] {
        let names: Vec<String> = list(&b, &dir, max)
            .await
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, want[..max], "list {dir} with at most {max}");
    }
    assert_eq!(names_in(&b, &dir.join(&p("sub"))).await, ["inner"]);
    let top = names_in(&b, &VPath::root()).await;
    assert!(
        !top.iter().any(|n| n == PRIVATE_DIR),
        "list /: the daemon's private {PRIVATE_DIR} is listed: {top:?}"
    );
    let own = dir.to_string();
    assert!(
        top.iter().any(|n| own == format!("/{n}")),
        "list /: {own} is missing"
    );
    let file = dir.join(&p("a"));
    let missing = dir.join(&p("nope"));
    refused!(
        b.list(&file, 10).await,
        Error::NotADirectory(_),
        "list {file}"
    );
    refused!(
        b.list(&missing, 10).await,
        Error::NotFound(_),
        "list {missing}"
    );
    b.check_dir(&dir)
        .await
        .unwrap_or_else(|e| panic!("cd {dir}: {e}"));
    refused!(
        b.check_dir(&file).await,
        Error::NotADirectory(_),
        "cd {file}"
    );
    refused!(
        b.check_dir(&missing).await,
        Error::NotFound(_),
        "cd {missing}"
    );
    assert_eq!(stat(&b, &dir.join(&p("d"))).await.kind, FileKind::Dir);

    open.abort().await;
    let again = begin(&b, &dropped, &resuming(2 * MIB as u64, "contract-dropped")).await;
    assert!(
        again.offset() <= MIB as u64,
        "resumed past what was written"
    );
    again.abort().await;
}

/// mkdir makes a directory, refuses an existing name (Exists) and a missing parent
/// (NotFound); mkdir -p makes the missing parents and takes an existing directory. rmdir
/// refuses a directory that is not empty (NotEmpty) and removes an empty one; rm refuses a
/// directory and a missing file; a directory outlives its last file.
pub async fn directories(b: Arc<dyn Backend>) {
    let dir = case_dir(&b, "directories").await;
    let a = dir.join(&p("a"));
    mkdir(&b, &a, false).await;
    assert_eq!(stat(&b, &a).await.kind, FileKind::Dir, "stat {a}");
    refused!(
        b.mkdir(&a, false).await,
        Error::Exists(_),
        "mkdir {a} again"
    );
    b.mkdir(&a, true)
        .await
        .unwrap_or_else(|e| panic!("mkdir -p {a}, which exists: {e}"));
    let deep = dir.join(&p("x/y/z"));
    b.mkdir(&deep, true)
        .await
        .unwrap_or_else(|e| panic!("mkdir -p {deep}: {e}"));
    for d in ["x", "x/y", "x/y/z"] {
        let d = dir.join(&p(d));
        assert_eq!(stat(&b, &d).await.kind, FileKind::Dir, "stat {d}");
    }
    let orphan = dir.join(&p("q/r"));
    refused!(
        b.mkdir(&orphan, false).await,
        Error::NotFound(_),
        "mkdir {orphan}"
    );
    refused!(
        b.stat(&dir.join(&p("q"))).await,
        Error::NotFound(_),
        "stat {dir}/q after a refused mkdir"
    );

    let f = a.join(&p("f"));
    put(&b, &f, b"one", false).await;
    refused!(
        b.mkdir(&f, false).await,
        Error::Exists(_),
        "mkdir {f}, a file"
    );
    refused!(
        b.remove_dir(&a).await,
        Error::NotEmpty(_),
        "rmdir {a} holding a file"
    );
    let x = dir.join(&p("x"));
    refused!(
        b.remove_dir(&x).await,
        Error::NotEmpty(_),
        "rmdir {x} holding a directory"
    );
    refused!(b.remove_file(&a).await, Error::IsDirectory(_), "rm {a}");
    refused!(b.remove_dir(&f).await, Error::NotADirectory(_), "rmdir {f}");
    b.remove_file(&f)
        .await
        .unwrap_or_else(|e| panic!("rm {f}: {e}"));
    refused!(b.stat(&f).await, Error::NotFound(_), "stat {f} after rm");
    refused!(b.remove_file(&f).await, Error::NotFound(_), "rm {f} again");
    assert_eq!(
        stat(&b, &a).await.kind,
        FileKind::Dir,
        "{a} after rm of its only file"
    );
    assert!(names_in(&b, &a).await.is_empty(), "list {a} after rm");
    b.remove_dir(&a)
        .await
        .unwrap_or_else(|e| panic!("rmdir {a}: {e}"));
    refused!(b.stat(&a).await, Error::NotFound(_), "stat {a} after rmdir");
    refused!(
        b.remove_dir(&a).await,
        Error::NotFound(_),
        "rmdir {a} again"
    );
    for d in ["x/y/z", "x/y", "x"] {
        let d = dir.join(&p(d));
        b.remove_dir(&d)
            .await
            .unwrap_or_else(|e| panic!("rmdir {d}: {e}"));
    }
    assert!(names_in(&b, &dir).await.is_empty(), "list {dir} at the end");
}

/// rename moves a file within its directory and into another, refuses an existing target
/// (Exists) leaving both as they were, refuses a missing source (NotFound) and a directory
/// into itself, and moves a small directory with all it holds.
pub async fn renames(b: Arc<dyn Backend>) {
    let dir = case_dir(&b, "renames").await;
    let (f, g) = (dir.join(&p("f")), dir.join(&p("g")));
    let one = pattern(3 * MIB + 1, 7);
    put(&b, &f, &one, false).await;
    rename(&b, &f, &g).await;
    refused!(
        b.stat(&f).await,
        Error::NotFound(_),
        "stat {f} after rename"
    );
    same(
        &format!("read {g}"),
        &body(read(&b, &g, 0).await).await,
        &one,
    );

    let other = dir.join(&p("other"));
    mkdir(&b, &other, false).await;
    let moved = other.join(&p("g"));
    rename(&b, &g, &moved).await;
    same(
        &format!("read {moved}"),
        &body(read(&b, &moved, 0).await).await,
        &one,
    );

    let h = dir.join(&p("h"));
    put(&b, &h, b"hhh", false).await;
    refused!(
        b.rename(&h, &moved).await,
        Error::Exists(_),
        "rename {h} onto {moved}"
    );
    refused!(
        b.rename(&h, &other).await,
        Error::Exists(_),
        "rename {h} onto {other}"
    );
    same(
        &format!("read {h}"),
        &body(read(&b, &h, 0).await).await,
        b"hhh",
    );
    same(
        &format!("read {moved}"),
        &body(read(&b, &moved, 0).await).await,
        &one,
    );
    let missing = dir.join(&p("missing"));
    refused!(
        b.rename(&missing, &dir.join(&p("m2"))).await,
        Error::NotFound(_),
        "rename {missing}"
    );

    let tree = dir.join(&p("tree"));
    mkdir(&b, &tree.join(&p("sub")), true).await;
    mkdir(&b, &tree.join(&p("empty")), false).await;
    put(&b, &tree.join(&p("a")), b"a", false).await;
    put(&b, &tree.join(&p("b")), b"bb", false).await;
    put(&b, &tree.join(&p("sub/c")), b"ccc", false).await;
    let to = dir.join(&p("tree2"));
    rename(&b, &tree, &to).await;
    refused!(
        b.stat(&tree).await,
        Error::NotFound(_),
        "stat {tree} after rename"
    );
    assert_eq!(
        names_in(&b, &to).await,
        ["a", "b", "empty", "sub"],
        "list {to}"
    );
    assert_eq!(stat(&b, &to.join(&p("empty"))).await.kind, FileKind::Dir);
    let c = to.join(&p("sub/c"));
    same(
        &format!("read {c}"),
        &body(read(&b, &c, 0).await).await,
        b"ccc",
    );
    let inside = to.join(&p("sub/in"));
    refused!(
        b.rename(&to, &inside).await,
        Error::Denied { .. },
        "rename {to} into itself"
    );

    let (e1, e2) = (dir.join(&p("e1")), dir.join(&p("e2")));
    mkdir(&b, &e1, false).await;
    rename(&b, &e1, &e2).await;
    assert_eq!(stat(&b, &e2).await.kind, FileKind::Dir, "stat {e2}");
    refused!(
        b.stat(&e1).await,
        Error::NotFound(_),
        "stat {e1} after rename"
    );
}

/// An upload never replaces a file unless it asked to: one that exists is refused at
/// begin_upload, one that appeared meanwhile at commit (Exists either way), and with overwrite
/// the new file replaces the old.
pub async fn no_clobber(b: Arc<dyn Backend>) {
    let dir = case_dir(&b, "no-clobber").await;
    let f = dir.join(&p("f"));
    let old = pattern(MIB + 3, 1);
    put(&b, &f, &old, false).await;
    refused!(
        b.begin_upload(&f, &req(3)).await,
        Error::Exists(_),
        "upload to {f}, which exists, without overwrite"
    );
    same(
        &format!("read {f}"),
        &body(read(&b, &f, 0).await).await,
        &old,
    );

    let g = dir.join(&p("g"));
    let mine = pattern(2 * MIB, 2);
    let mut first = begin(&b, &g, &req(mine.len() as u64)).await;
    send(&mut first, &mine, &mut Hasher::new(DigestKind::Md5)).await;
    let theirs = pattern(MIB, 3);
    put(&b, &g, &theirs, false).await;
    refused!(
        first.commit(Digest::md5(&mine), false).await,
        Error::Exists(_),
        "commit to {g}, which appeared meanwhile, without overwrite"
    );
    same(
        &format!("read {g}"),
        &body(read(&b, &g, 0).await).await,
        &theirs,
    );

    let new = pattern(2 * MIB + 5, 4);
    let mut r = req(new.len() as u64);
    r.overwrite = true;
    let mut w = begin(&b, &f, &r).await;
    let running = send(&mut w, &new, &mut Hasher::new(DigestKind::Md5)).await;
    w.commit(Digest::md5(&new), true)
        .await
        .unwrap_or_else(|e| panic!("commit to {f} with overwrite: {e}"));
    assert_eq!(stat(&b, &f).await.size, new.len() as u64, "stat {f}");
    let r = read(&b, &f, 0).await;
    recorded_as_sent(&f, r.recorded.clone(), &running, &new);
    same(&format!("read {f} replaced"), &body(r).await, &new);
}

/// Nothing is visible under an upload's name, not even with all its bytes written, until it
/// is committed.
pub async fn invisible_until_commit(b: Arc<dyn Backend>) {
    let dir = case_dir(&b, "invisible").await;
    let f = dir.join(&p("f"));
    let data = pattern(6 * MIB + 5, 5);
    let mut w = begin(&b, &f, &with_id(data.len() as u64, "contract-invisible")).await;
    let mut hasher = Hasher::new(DigestKind::Md5);
    let mut running = send(&mut w, &data[..MIB], &mut hasher).await;
    let not_yet = |when: &'static str| {
        let (b, f, dir) = (b.clone(), f.clone(), dir.clone());
        async move {
            refused!(b.stat(&f).await, Error::NotFound(_), "stat {f} {when}");
            refused!(b.read(&f, 0).await, Error::NotFound(_), "read {f} {when}");
            let names = names_in(&b, &dir).await;
            assert!(names.is_empty(), "list {dir} {when}: {names:?}");
        }
    };
    not_yet("with part of its bytes written").await;
    running.extend(send(&mut w, &data[MIB..], &mut hasher).await);
    not_yet("with all its bytes written, before commit").await;
    w.commit(Digest::md5(&data), false)
        .await
        .unwrap_or_else(|e| panic!("commit {f}: {e}"));
    assert_eq!(names_in(&b, &dir).await, ["f"], "list {dir} after commit");
    let r = read(&b, &f, 0).await;
    recorded_as_sent(&f, r.recorded.clone(), &running, &data);
    same(&format!("read {f}"), &body(r).await, &data);
}

/// An upload with an id whose Writing is dropped (a lost connection) resumes from an offset no
/// further than what was written, with the running digest of exactly the bytes before it
/// (a backend that stores in parts keeps only whole parts: possibly 0), and finishing from
/// there gives the file; a sweep of uploads abandoned for an hour leaves it alone. Returns the
/// offset it resumed from, for a backend's own tests to say what they expect of it.
pub async fn resume_after_drop(b: Arc<dyn Backend>) -> u64 {
    let dir = case_dir(&b, "resume").await;
    let f = dir.join(&p("f"));
    let data = pattern(12 * MIB + 5, 6);
    let written = 7 * MIB;
    let id = "contract-resume";
    let mut w = begin(&b, &f, &with_id(data.len() as u64, id)).await;
    send(&mut w, &data[..written], &mut Hasher::new(DigestKind::Md5)).await;
    assert_eq!(w.offset(), written as u64, "offset after writing");
    drop(w);
    refused!(
        b.stat(&f).await,
        Error::NotFound(_),
        "stat {f} after a dropped upload"
    );
    b.sweep(Duration::from_secs(3600))
        .await
        .unwrap_or_else(|e| panic!("sweep: {e}"));

    let other = begin(&b, &f, &resuming(data.len() as u64, "contract-other-id")).await;
    assert_eq!(
        other.offset(),
        0,
        "a resume with another id starts from nothing"
    );
    other.abort().await;

    let mut w = begin(&b, &f, &resuming(data.len() as u64, id)).await;
    let offset = w.offset();
    assert!(
        offset <= written as u64,
        "resumed at {offset}, past the {written} bytes written"
    );
    let mut hasher = w.prefix();
    assert_eq!(
        hasher.digest(),
        Digest::md5(&data[..offset as usize]),
        "the prefix digest at the resume's offset {offset} is not of the first {offset} bytes"
    );
    send(&mut w, &data[offset as usize..], &mut hasher).await;
    w.commit(Digest::md5(&data), false)
        .await
        .unwrap_or_else(|e| panic!("commit {f} after resuming at {offset}: {e}"));
    let r = read(&b, &f, 0).await;
    if let Some(rec) = &r.recorded {
        assert_eq!(rec.digest, Digest::md5(&data), "{f}: recorded digest");
    }
    same(
        &format!("read {f} resumed at {offset}"),
        &body(r).await,
        &data,
    );
    offset
}

/// An aborted upload leaves nothing: no file, nothing to resume, nothing held.
pub async fn abort_leaves_nothing(b: Arc<dyn Backend>) {
    let dir = case_dir(&b, "abort").await;
    let before = usage(&b).await;
    let f = dir.join(&p("f"));
    let id = "contract-abort";
    let size = 7 * MIB as u64;
    let mut w = begin(&b, &f, &with_id(size, id)).await;
    send(
        &mut w,
        &pattern(6 * MIB, 8),
        &mut Hasher::new(DigestKind::Md5),
    )
    .await;
    w.abort().await;
    refused!(b.stat(&f).await, Error::NotFound(_), "stat {f} after abort");
    assert!(
        names_in(&b, &dir).await.is_empty(),
        "list {dir} after abort"
    );
    let again = begin(&b, &f, &resuming(size, id)).await;
    assert_eq!(again.offset(), 0, "resuming an aborted upload");
    again.abort().await;
    let after = usage(&b).await;
    assert_eq!(
        (after.bytes, after.files),
        (before.bytes, before.files),
        "usage before and after an aborted upload"
    );
}

/// A home's view resolves every path beneath the home and names paths in errors as the
/// home sees them, never where it lies.
pub async fn home_view(b: Arc<dyn Backend>) {
    let dir = case_dir(&b, "home").await;
    let at = dir.join(&p("home"));
    mkdir(&b, &at.join(&p("sub")), true).await;
    put(&b, &dir.join(&p("outside")), b"out", false).await;
    let view = b
        .home(&at, "alice")
        .unwrap_or_else(|e| panic!("home {at}: {e}"));
    let hidden = dir.to_string();
    let hidden = hidden.trim_start_matches('/');
    let confined = |e: Error, what: &str| {
        let shown = e.to_string();
        assert!(
            !shown.contains(hidden),
            "{what}: the error names where the home lies: {shown}"
        );
        shown
    };

    assert_eq!(
        names_in(&view, &VPath::root()).await,
        ["sub"],
        "list / in the home"
    );
    put(&view, &p("mine"), b"mine", false).await;
    assert_eq!(
        stat(&b, &at.join(&p("mine"))).await.size,
        4,
        "the home's /mine seen whole"
    );
    same(
        "read /mine in the home",
        &body(read(&view, &p("mine"), 0).await).await,
        b"mine",
    );
    assert_eq!(
        stat(&view, &p("mine")).await.name,
        "/mine",
        "stat /mine in the home"
    );
    refused!(
        view.stat(&p("outside")).await,
        Error::NotFound(_),
        "stat /outside in the home"
    );

    let e = view
        .stat(&p("nope"))
        .await
        .expect_err("stat /nope in the home");
    assert_eq!(confined(e, "stat"), "/nope: no such file or directory");
    let e = view
        .remove_file(&p("gone"))
        .await
        .expect_err("rm /gone in the home");
    assert_eq!(confined(e, "rm"), "/gone: no such file or directory");
    let e = match view.begin_upload(&p("missing/x"), &req(1)).await {
        Ok(_) => panic!("upload to /missing/x in the home succeeded"),
        Err(e) => e,
    };
    let shown = confined(e, "upload to a missing directory");
    assert!(shown.contains("/missing"), "upload to /missing/x: {shown}");
    let e = view.list(&p("nope"), 10).await.expect_err("list /nope");
    confined(e, "list");
    let e = view.mkdir(&p("q/r"), false).await.expect_err("mkdir /q/r");
    confined(e, "mkdir");
    let e = view.home(&p("nohome"), "alice").expect_err("home /nohome");
    assert!(matches!(e, Error::NotFound(_)), "home /nohome: {e:?}");
    confined(e, "home");

    view.rename(&p("mine"), &p("sub/mine"))
        .await
        .unwrap_or_else(|e| panic!("rename in the home: {e}"));
    assert_eq!(
        stat(&b, &at.join(&p("sub/mine"))).await.kind,
        FileKind::File
    );
    let nested = view
        .home(&p("sub"), "alice")
        .unwrap_or_else(|e| panic!("home /sub in the home: {e}"));
    assert_eq!(
        names_in(&nested, &VPath::root()).await,
        ["mine"],
        "list / in /sub"
    );
}

/// Bytes past the declared size are refused; a commit short of it is refused (Incomplete)
/// and leaves nothing visible; a size over the largest any file may have is refused up front.
pub async fn size_limits(b: Arc<dyn Backend>) {
    let dir = case_dir(&b, "sizes").await;
    let f = dir.join(&p("f"));
    let data = pattern(11, 9);

    let mut w = begin(&b, &f, &req(10)).await;
    refused!(
        w.write(Bytes::copy_from_slice(&data), Digest::md5(&data))
            .await,
        Error::TooLarge { .. },
        "11 bytes to {f}, declared 10"
    );
    w.abort().await;

    let mut w = begin(&b, &f, &req(10)).await;
    let mut hasher = Hasher::new(DigestKind::Md5);
    let running = hasher.seal(&data[..10]);
    w.write(Bytes::copy_from_slice(&data[..10]), running)
        .await
        .unwrap_or_else(|e| panic!("10 bytes to {f}: {e}"));
    assert_eq!(w.offset(), 10);
    let running = hasher.seal(&data[10..]);
    refused!(
        w.write(Bytes::copy_from_slice(&data[10..]), running).await,
        Error::TooLarge { .. },
        "an 11th byte to {f}, declared 10"
    );
    w.abort().await;

    let mut w = begin(&b, &f, &req(10)).await;
    let running = Hasher::new(DigestKind::Md5).seal(&data[..4]);
    w.write(Bytes::copy_from_slice(&data[..4]), running)
        .await
        .unwrap_or_else(|e| panic!("4 bytes to {f}: {e}"));
    match w.commit(Digest::md5(&data[..4]), false).await {
        Err(Error::Incomplete { written, size, .. }) => {
            assert_eq!((written, size), (4, 10), "commit of 4 of 10 bytes")
        }
        other => panic!("commit of 4 of 10 bytes to {f}: {other:?}, expected Incomplete"),
    }
    refused!(
        b.stat(&f).await,
        Error::NotFound(_),
        "stat {f} after a short commit"
    );
    refused!(
        b.begin_upload(&f, &req(MAX_SIZE + 1)).await,
        Error::TooLarge { .. },
        "an upload of 2^53 + 1 bytes"
    );
}

/// A home's own quota (set on the store, paths relative to the view it is set on) is shown in
/// its usage and refuses an upload over it. Sets the limits of homes: any the backend had are
/// gone afterwards.
pub async fn home_quota(b: Arc<dyn Backend>) {
    let dir = case_dir(&b, "quota").await;
    let at = dir.join(&p("home"));
    mkdir(&b, &at, false).await;
    let limits = HomeLimits {
        quota: Some(1000),
        max_files: None,
    };
    b.set_home_limits(vec![(at.clone(), "carol".to_owned(), limits)]);
    let view = b
        .home(&at, "carol")
        .unwrap_or_else(|e| panic!("home {at}: {e}"));
    let u = usage(&view).await;
    assert_eq!(
        (u.bytes, u.quota),
        (0, Some(1000)),
        "usage of an empty home"
    );
    put(&view, &p("a"), &pattern(600, 1), false).await;
    let u = usage(&view).await;
    assert_eq!(
        (u.bytes, u.files),
        (600, 1),
        "usage with one file of 600 bytes"
    );
    refused!(
        view.begin_upload(&p("b"), &req(500)).await,
        Error::TooLarge { .. },
        "500 bytes more in a home of 600 with a quota of 1000"
    );
    put(&view, &p("b"), &pattern(400, 2), false).await;
    b.set_home_limits(Vec::new());
}

// --- Helpers -------------------------------------------------------------------------------

/// A path from the top.
fn p(s: &str) -> VPath {
    VPath::resolve(&VPath::root(), s).unwrap_or_else(|e| panic!("bad test path {s:?}: {e}"))
}

/// A fresh directory at the top for one case: its name is the process's and a counter's, so
/// that cases and runs sharing a store never meet.
async fn case_dir(b: &Arc<dyn Backend>, case: &str) -> VPath {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = p(&format!("contract-{case}-{}-{n}", std::process::id()));
    mkdir(b, &dir, false).await;
    dir
}

/// Bytes that differ at every offset that matters: a byte misplaced by any amount is caught.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8) ^ seed)
        .collect()
}

fn req(size: u64) -> UploadRequest {
    UploadRequest {
        size,
        overwrite: false,
        upload_id: None,
        resume: false,
        mtime: Some(MTIME),
        digest: DigestKind::Md5,
    }
}

fn with_id(size: u64, id: &str) -> UploadRequest {
    UploadRequest {
        upload_id: Some(id.to_owned()),
        ..req(size)
    }
}

fn resuming(size: u64, id: &str) -> UploadRequest {
    UploadRequest {
        upload_id: Some(id.to_owned()),
        resume: true,
        ..req(size)
    }
}

async fn begin(b: &Arc<dyn Backend>, path: &VPath, r: &UploadRequest) -> Box<dyn Writing> {
    b.begin_upload(path, r)
        .await
        .unwrap_or_else(|e| panic!("upload to {path}: {e}"))
}

/// Sends `data` in chunks of [`CHUNK`] with their running digests (`hasher` holds what was
/// sent before); returns the running digests.
async fn send(w: &mut Box<dyn Writing>, data: &[u8], hasher: &mut Hasher) -> Vec<Digest> {
    let mut running = Vec::new();
    for chunk in data.chunks(CHUNK) {
        let digest = hasher.seal(chunk);
        w.write(Bytes::copy_from_slice(chunk), digest)
            .await
            .unwrap_or_else(|e| panic!("write at {}: {e}", w.offset()));
        running.push(digest);
    }
    running
}

/// Uploads `data` to `path` whole; returns the chunks' running digests.
async fn put(b: &Arc<dyn Backend>, path: &VPath, data: &[u8], overwrite: bool) -> Vec<Digest> {
    let r = UploadRequest {
        overwrite,
        ..req(data.len() as u64)
    };
    let mut w = begin(b, path, &r).await;
    let running = send(&mut w, data, &mut Hasher::new(DigestKind::Md5)).await;
    w.commit(Digest::md5(data), overwrite)
        .await
        .unwrap_or_else(|e| panic!("commit {path}: {e}"));
    running
}

async fn stat(b: &Arc<dyn Backend>, path: &VPath) -> FileInfo {
    b.stat(path)
        .await
        .unwrap_or_else(|e| panic!("stat {path}: {e}"))
}

async fn read(b: &Arc<dyn Backend>, path: &VPath, offset: u64) -> Reading {
    b.read(path, offset)
        .await
        .unwrap_or_else(|e| panic!("read {path} from {offset}: {e}"))
}

async fn mkdir(b: &Arc<dyn Backend>, path: &VPath, parents: bool) {
    b.mkdir(path, parents)
        .await
        .unwrap_or_else(|e| panic!("mkdir {path}: {e}"))
}

async fn rename(b: &Arc<dyn Backend>, from: &VPath, to: &VPath) {
    b.rename(from, to)
        .await
        .unwrap_or_else(|e| panic!("rename {from} to {to}: {e}"))
}

async fn list(b: &Arc<dyn Backend>, dir: &VPath, max: usize) -> Vec<FileInfo> {
    b.list(dir, max)
        .await
        .unwrap_or_else(|e| panic!("list {dir}: {e}"))
}

async fn names_in(b: &Arc<dyn Backend>, dir: &VPath) -> Vec<String> {
    list(b, dir, 10_000)
        .await
        .into_iter()
        .map(|e| e.name)
        .collect()
}

async fn usage(b: &Arc<dyn Backend>) -> crate::HomeUsage {
    b.usage().await.unwrap_or_else(|e| panic!("usage: {e}"))
}

/// All of a reading's body, never more than its size.
async fn body(mut r: Reading) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(piece) = r.body.next().await {
        let piece = piece.unwrap_or_else(|e| panic!("reading at {}: {e}", out.len()));
        out.extend_from_slice(&piece);
        assert!(
            out.len() as u64 <= r.size,
            "a reading yields more than its size {}",
            r.size
        );
    }
    out
}

/// Compares bytes without printing megabytes of them.
fn same(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        let at = at.unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: {} bytes where {} were expected, the first difference at byte {at}",
            got.len(),
            want.len()
        );
    }
}

/// The digests a read carries are the ones the upload's chunks carried.
fn recorded_as_sent(path: &VPath, rec: Option<ChunkDigests>, running: &[Digest], data: &[u8]) {
    let rec = rec.unwrap_or_else(|| {
        panic!("read {path}: no digests recorded, though the file is as it was uploaded")
    });
    assert_eq!(
        rec.digest,
        Digest::md5(data),
        "read {path}: recorded digest"
    );
    assert_eq!(
        rec.chunks, running,
        "read {path}: recorded running digests are not the chunks'"
    );
    if running.len() > 1 {
        assert_eq!(
            rec.chunk as usize, CHUNK,
            "read {path}: recorded chunk length"
        );
    }
}
