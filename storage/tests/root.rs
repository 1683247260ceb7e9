//! The storage root against a real temp directory.

use checksum::{Digest, DigestKind};
use storage::{Error, Home, Root, Upload, UploadRequest, VPath};

/// A root and, beside it, its state directory, in a temp dir removed when dropped.
struct Site {
    /// Holds `root/` and `state/`.
    dir: tempfile::TempDir,
    /// The root, `dir/root`.
    root: std::path::PathBuf,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        Site { dir, root }
    }

    /// The root on disk.
    fn path(&self) -> &std::path::Path {
        &self.root
    }

    /// The state directory on disk.
    fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    /// Where uploads are staged, on disk.
    fn staging(&self) -> std::path::PathBuf {
        self.state().join("staging")
    }

    fn open(&self) -> Root {
        Root::open(&self.root, &self.state()).unwrap()
    }

    fn open_with(&self, limits: storage::Limits) -> Root {
        Root::open_with_limits(&self.root, &self.state(), limits).unwrap()
    }
}

/// A fresh root, seen as one home that is the whole root (as an anonymous session sees it).
fn setup() -> (Site, Home) {
    let dir = Site::new();
    let root = whole(dir.open());
    (dir, root)
}

fn whole(root: Root) -> Home {
    root.home(&VPath::root()).unwrap()
}

/// Bytes appended as the transfer engine would after verifying them; the digest recorded for
/// them does not matter here.
trait Verified {
    fn write(&mut self, data: impl AsRef<[u8]>) -> storage::Result<()>;
}

impl Verified for Upload {
    fn write(&mut self, data: impl AsRef<[u8]>) -> storage::Result<()> {
        self.write_chunk(data.as_ref(), Digest::default())
    }
}

fn p(s: &str) -> VPath {
    VPath::resolve(&VPath::root(), s).unwrap()
}

fn req(size: u64) -> UploadRequest {
    UploadRequest {
        size,
        overwrite: false,
        upload_id: None,
        resume: false,
        mtime: None,
        digest: DigestKind::Md5,
    }
}

#[test]
fn upload_is_invisible_until_committed() {
    let (dir, root) = setup();
    let mut up = root.begin_upload(&p("a.bin"), &req(6)).unwrap();
    up.write(b"abc").unwrap();
    assert!(!dir.path().join("a.bin").exists());
    up.write(b"def").unwrap();
    assert!(!dir.path().join("a.bin").exists());
    up.commit(Digest::md5(b"abcdef"), false).unwrap();
    assert_eq!(std::fs::read(dir.path().join("a.bin")).unwrap(), b"abcdef");
    let staged: Vec<_> = std::fs::read_dir(dir.staging()).unwrap().collect();
    assert!(staged.is_empty(), "staging is empty after commit");
}

/// An upload the engine found wrong is discarded: nothing visible, nothing kept to resume.
#[test]
fn a_discarded_upload_leaves_nothing() {
    let (dir, root) = setup();
    let mut r = req(3);
    r.upload_id = Some("id".into());
    let mut up = root.begin_upload(&p("a.bin"), &r).unwrap();
    up.write(b"abc").unwrap();
    up.discard();
    assert!(!dir.path().join("a.bin").exists());
    r.resume = true;
    assert_eq!(root.begin_upload(&p("a.bin"), &r).unwrap().offset(), 0);
}

#[test]
fn refuses_to_overwrite_unless_asked() {
    let (dir, root) = setup();
    std::fs::write(dir.path().join("a"), "old").unwrap();
    assert!(matches!(
        root.begin_upload(&p("a"), &req(1)),
        Err(Error::Exists(_))
    ));
    let mut r = req(3);
    r.overwrite = true;
    let mut up = root.begin_upload(&p("a"), &r).unwrap();
    up.write(b"new").unwrap();
    up.commit(Digest::md5(b"new"), true).unwrap();
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"new");
}

#[test]
fn a_file_that_appears_meanwhile_is_not_clobbered() {
    let (dir, root) = setup();
    let mut up = root.begin_upload(&p("a"), &req(3)).unwrap();
    up.write(b"new").unwrap();
    std::fs::write(dir.path().join("a"), "raced").unwrap();
    assert!(matches!(
        up.commit(Digest::md5(b"new"), false),
        Err(Error::Exists(_))
    ));
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"raced");
}

#[test]
fn writes_past_the_declared_size_are_refused() {
    let (_dir, root) = setup();
    let mut up = root.begin_upload(&p("a"), &req(2)).unwrap();
    assert!(up.write(b"abc").is_err());
}

#[test]
fn resume_continues_staged_bytes_with_the_same_id() {
    let (dir, root) = setup();
    let mut r = req(6);
    r.upload_id = Some("id-1".into());
    let mut up = root.begin_upload(&p("a"), &r).unwrap();
    up.write(b"abc").unwrap();
    drop(up); // connection lost
    r.resume = true;
    let mut up = root.begin_upload(&p("a"), &r).unwrap();
    assert_eq!(up.offset(), 3);
    assert_eq!(up.prefix().digest(), Digest::md5(b"abc"));
    up.write(b"def").unwrap();
    up.commit(Digest::md5(b"abcdef"), false).unwrap();
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"abcdef");

    // Another id for the same path starts from nothing.
    let mut other = req(1);
    other.upload_id = Some("id-2".into());
    other.resume = true;
    other.overwrite = true;
    assert_eq!(root.begin_upload(&p("a"), &other).unwrap().offset(), 0);
}

/// A client that reconnects while the daemon still holds its old, stalled connection must be
/// able to resume; the old attempt must never write again, nor remove the staged bytes. The
/// newer attempt finds what reached the disk (bytes still in the older one's buffer do not, and
/// never will).
#[test]
fn a_newer_attempt_at_the_same_upload_supersedes_the_older() {
    let (dir, root) = setup();
    let mib = 1 << 20;
    let data: Vec<u8> = (0..mib + 6).map(|i| (i % 251) as u8).collect();
    let mut r = req(data.len() as u64);
    r.upload_id = Some("same".into());
    let mut older = root.begin_upload(&p("a"), &r).unwrap();
    older.write(&data[..mib + 3]).unwrap();
    r.resume = true;
    let mut newer = root.begin_upload(&p("a"), &r).unwrap();
    let held = newer.offset() as usize;
    assert!(held <= mib + 3, "{held}");
    assert_eq!(newer.prefix().digest(), Digest::md5(&data[..held]));
    assert!(matches!(older.write(b"XXX"), Err(Error::Busy { .. })));
    // The older attempt ends (and is dropped) without touching the newer one's bytes.
    assert!(older.commit(Digest::md5(&data), false).is_err());
    newer.write(&data[held..]).unwrap();
    newer.commit(Digest::md5(&data), false).unwrap();
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), data);
}

#[test]
fn sweep_removes_only_old_idle_staged_uploads() {
    let (dir, root) = setup();
    let mut r = req(6);
    r.upload_id = Some("kept".into());
    let mut up = root.begin_upload(&p("a"), &r).unwrap();
    up.write(b"abc").unwrap();
    // Still active: never swept, however old.
    assert_eq!(
        root.root()
            .sweep_staging(std::time::Duration::ZERO)
            .unwrap(),
        0
    );
    drop(up);
    assert_eq!(
        root.root()
            .sweep_staging(std::time::Duration::from_secs(3600))
            .unwrap(),
        0
    );
    assert_eq!(
        root.root()
            .sweep_staging(std::time::Duration::ZERO)
            .unwrap(),
        1
    );
    let left: Vec<_> = std::fs::read_dir(dir.staging()).unwrap().collect();
    assert!(left.is_empty());
}

#[test]
fn reads_report_size_and_refuse_directories() {
    let (dir, root) = setup();
    std::fs::write(dir.path().join("f"), "12345").unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    assert_eq!(root.open_read(&p("f")).unwrap().size, 5);
    assert!(matches!(
        root.open_read(&p("d")),
        Err(Error::IsDirectory(_))
    ));
    assert!(matches!(
        root.open_read(&p("nope")),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        root.begin_upload(&p("nodir/x"), &req(1)),
        Err(Error::NotFound(_))
    ));
}

#[cfg(unix)]
#[test]
fn symlinks_out_of_the_root_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "s3cret").unwrap();
    let (dir, root) = setup();
    std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
    let err = root.open_read(&p("link")).unwrap_err();
    assert!(matches!(err, Error::Denied { .. }), "{err}");
    assert!(root.open_read(&p("out/secret")).is_err());
    assert!(root.begin_upload(&p("out/new"), &req(1)).is_err());
    assert!(!outside.path().join("new").exists());
    // A link that stays inside the root is fine.
    std::fs::write(dir.path().join("real"), "ok").unwrap();
    std::os::unix::fs::symlink("real", dir.path().join("inside")).unwrap();
    assert_eq!(root.open_read(&p("inside")).unwrap().size, 2);
}

#[test]
fn max_file_size_is_refused_up_front() {
    let dir = Site::new();
    let limits = storage::Limits {
        max_file_size: Some(10),
        ..Default::default()
    };
    let root = whole(dir.open_with(limits));
    let err = root.begin_upload(&p("big"), &req(11)).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert!(root.begin_upload(&p("ok"), &req(10)).is_ok());
}

#[test]
fn quota_counts_existing_files_uploads_in_flight_and_replacements() {
    let dir = Site::new();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    std::fs::write(dir.path().join("d/old"), [0u8; 40]).unwrap();
    let limits = storage::Limits {
        quota: Some(100),
        ..Default::default()
    };
    let root = whole(dir.open_with(limits));
    // 40 used: 60 fit, 61 do not.
    assert!(root.begin_upload(&p("a"), &req(61)).is_err());
    let mut a = root.begin_upload(&p("a"), &req(30)).unwrap();
    // 40 used + 30 reserved: another 31 do not fit while `a` is in flight.
    assert!(root.begin_upload(&p("b"), &req(31)).is_err());
    a.write([1u8; 30]).unwrap();
    a.commit(Digest::md5(&[1u8; 30]), false).unwrap();
    assert!(root.begin_upload(&p("b"), &req(31)).is_err());
    assert!(root.begin_upload(&p("b"), &req(30)).is_ok());
    // Replacing the 40-byte file grows the root only by the difference: 71 bytes would be 31
    // more, one too many; 40 bytes are none more.
    let mut r = req(71);
    r.overwrite = true;
    assert!(root.begin_upload(&p("d/old"), &r).is_err());
    let mut r = req(40);
    r.overwrite = true;
    let mut up = root.begin_upload(&p("d/old"), &r).unwrap();
    up.write([2u8; 40]).unwrap();
    up.commit(Digest::md5(&[2u8; 40]), true).unwrap();
    assert!(
        root.begin_upload(&p("c"), &req(31)).is_err(),
        "70 used, 30 free"
    );
    assert!(
        root.begin_upload(&p("c"), &req(30)).is_ok(),
        "70 used, 30 free"
    );
}

#[test]
fn listing_hides_the_private_directory_and_reports_kinds() {
    let (dir, root) = setup();
    std::fs::write(dir.path().join("f"), "12345").unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
    let mut got: Vec<_> = root
        .list(&VPath::root())
        .unwrap()
        .map(|e| (e.name, e.kind, e.size))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    use storage::FileKind::*;
    assert_eq!(
        got,
        [
            ("d".into(), Dir, 0),
            ("f".into(), File, 5),
            ("l".into(), Symlink, 1)
        ]
    );
    assert!(matches!(root.list(&p("f")), Err(Error::NotADirectory(_))));
    assert!(matches!(root.list(&p("nope")), Err(Error::NotFound(_))));
}

#[test]
fn file_management() {
    let (dir, root) = setup();
    root.mkdir(&p("a"), false).unwrap();
    assert!(matches!(root.mkdir(&p("a"), false), Err(Error::Exists(_))));
    root.mkdir(&p("a"), true).unwrap();
    assert!(root.mkdir(&p("x/y"), false).is_err());
    root.mkdir(&p("x/y/z"), true).unwrap();
    std::fs::write(dir.path().join("a/f"), "1").unwrap();
    assert!(matches!(root.remove_dir(&p("a")), Err(Error::NotEmpty(_))));
    assert!(matches!(
        root.remove_file(&p("a")),
        Err(Error::IsDirectory(_))
    ));
    assert!(matches!(
        root.rename(&p("a/f"), &p("x")),
        Err(Error::Exists(_))
    ));
    assert!(matches!(
        root.rename(&p("x"), &p("x/y/in")),
        Err(Error::Denied { .. })
    ));
    root.rename(&p("a/f"), &p("x/g")).unwrap();
    assert!(dir.path().join("x/g").exists());
    root.remove_file(&p("x/g")).unwrap();
    root.remove_dir(&p("a")).unwrap();
    assert!(matches!(
        root.remove_dir(&VPath::root()),
        Err(Error::Denied { .. })
    ));
    assert!(dir.staging().exists(), "the private state survives");
}

/// Downloads may send the digests recorded at upload only while the file is exactly as it was.
#[test]
fn digests_are_recorded_at_upload_and_dropped_when_the_file_changes() {
    let (dir, root) = setup();
    let k = storage::MIN_RECORDED_CHUNK as usize;
    let data: Vec<u8> = (0..2 * k + 10).map(|i| (i % 251) as u8).collect();
    let n = data.len();
    let mut up = root.begin_upload(&p("f"), &req(n as u64)).unwrap();
    for (start, end) in [(0, k), (k, 2 * k), (2 * k, n)] {
        // A chunk's digest is the running MD5 of the file through its end.
        up.write_chunk(&data[start..end], Digest::md5(&data[..end]))
            .unwrap();
    }
    up.commit(Digest::md5(&data), false).unwrap();
    let rec = root.open_read(&p("f")).unwrap().recorded.expect("recorded");
    assert_eq!(rec.chunk as usize, k);
    assert_eq!(rec.digest, Digest::md5(&data));
    assert_eq!(
        rec.chunks,
        [
            Digest::md5(&data[..k]),
            Digest::md5(&data[..2 * k]),
            Digest::md5(&data)
        ]
    );

    // Rewritten in place (new content and mtime): the record no longer applies.
    std::fs::write(dir.path().join("f"), b"0123456789").unwrap();
    assert!(root.open_read(&p("f")).unwrap().recorded.is_none());
    assert_eq!(root.root().sweep_digests(), 1);

    // Chunks of uneven length are not recorded: the whole file's digest alone is.
    let mut up = root.begin_upload(&p("g"), &req(n as u64)).unwrap();
    up.write_chunk(&data[..k], Digest::md5(&data[..k])).unwrap();
    up.write_chunk(&data[k..k + 10], Digest::md5(&data[..k + 10]))
        .unwrap();
    up.write_chunk(&data[k + 10..], Digest::md5(&data)).unwrap();
    up.commit(Digest::md5(&data), false).unwrap();
    let rec = root.open_read(&p("g")).unwrap().recorded.unwrap();
    assert!(!rec.has_chunks() && rec.chunks.is_empty());
    assert_eq!(rec.digest, Digest::md5(&data));

    // A small file in one chunk is recorded: its only chunk is its last.
    let mut up = root.begin_upload(&p("s"), &req(10)).unwrap();
    up.write_chunk(&data[..10], Digest::md5(&data[..10]))
        .unwrap();
    up.commit(Digest::md5(&data[..10]), false).unwrap();
    assert!(root.open_read(&p("s")).unwrap().recorded.is_some());
}

/// Regression: an upload in 1-byte chunks made a 1 MiB file's record 35 MiB (outside any
/// quota), held memory for every chunk while it ran, and made every later download of the
/// file replay 1-byte chunks. Chunks shorter than the recorded minimum are not recorded (the
/// whole file's digest alone is).
#[test]
fn tiny_chunks_are_not_recorded() {
    let (_dir, root) = setup();
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let mut up = root.begin_upload(&p("t"), &req(data.len() as u64)).unwrap();
    for end in 1..=data.len() {
        up.write_chunk(&data[end - 1..end], Digest::md5(&data[..end]))
            .unwrap();
    }
    up.commit(Digest::md5(&data), false).unwrap();
    let rec = root.open_read(&p("t")).unwrap().recorded.unwrap();
    assert!(!rec.has_chunks() && rec.chunks.is_empty());
}

/// Bytes past the declared size are refused, and nothing of them is staged.
#[test]
fn bytes_past_the_declared_size_are_refused() {
    let (dir, root) = setup();
    let mut up = root.begin_upload(&p("f"), &req(3)).unwrap();
    up.write_chunk(b"ab", Digest::md5(b"ab")).unwrap();
    let err = up.write_chunk(b"cd", Digest::md5(b"abcd")).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert_eq!(up.offset(), 2);
    up.write_chunk(b"c", Digest::md5(b"abc")).unwrap();
    up.commit(Digest::md5(b"abc"), false).unwrap();
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"abc");
}

/// A home is a directory handle: paths resolve beneath it, errors name them as the home sees
/// them (never where the home lies in the root), and a link out of it leads nowhere.
#[cfg(unix)]
#[test]
fn a_home_confines_and_names_paths_from_its_own_top() {
    let dir = Site::new();
    let root = dir.open();
    std::fs::create_dir_all(dir.path().join("homes/alice")).unwrap();
    std::fs::create_dir_all(dir.path().join("homes/bob")).unwrap();
    std::fs::write(dir.path().join("homes/bob/secret"), "b").unwrap();
    std::os::unix::fs::symlink("../bob", dir.path().join("homes/alice/tobob")).unwrap();
    let alice = root.home(&p("homes/alice")).unwrap();
    let err = alice.open_read(&p("nope")).unwrap_err();
    assert_eq!(err.to_string(), "/nope: no such file or directory");
    assert!(alice.open_read(&p("tobob/secret")).is_err());
    assert!(alice.begin_upload(&p("tobob/new"), &req(1)).is_err());
    let mut up = alice.begin_upload(&p("mine"), &req(2)).unwrap();
    up.write(b"ok").unwrap();
    up.commit(Digest::md5(b"ok"), false).unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("homes/alice/mine")).unwrap(),
        b"ok"
    );
    let names: Vec<_> = alice
        .list(&VPath::root())
        .unwrap()
        .map(|e| e.name)
        .collect();
    assert!(names.contains(&"mine".to_owned()), "{names:?}");
}

// ---------------------------------------------------------------------------------------------
// Regressions from the hardening issue: staged bytes, quota arithmetic, races, crashes, inodes.

fn limited(dir: &Site, limits: storage::Limits) -> Home {
    whole(dir.open_with(limits))
}

fn quota(bytes: u64) -> storage::Limits {
    storage::Limits {
        quota: Some(bytes),
        ..Default::default()
    }
}

fn with_id(size: u64, id: &str) -> UploadRequest {
    UploadRequest {
        upload_id: Some(id.into()),
        ..req(size)
    }
}

fn staging_names(dir: &Site) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.staging())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn too_large<T: std::fmt::Debug>(r: storage::Result<T>) -> bool {
    matches!(r, Err(Error::TooLarge { .. }))
}

/// Item 3: uploads abandoned with an id stay staged for a resume; their bytes count against the
/// quota until swept, and still do after a restart.
#[test]
fn staged_bytes_of_abandoned_uploads_count_against_the_quota() {
    let dir = Site::new();
    let home = limited(&dir, quota(100));
    let mut up = home.begin_upload(&p("a"), &with_id(60, "a")).unwrap();
    up.write([1u8; 50]).unwrap();
    drop(up); // the connection is lost: 50 bytes stay staged for `put -c`
    assert!(
        too_large(home.begin_upload(&p("b"), &req(51))),
        "50 staged + 51 is over the quota of 100"
    );
    assert!(home.begin_upload(&p("b"), &req(50)).is_ok());
    drop(home);

    // A restart finds the staged bytes again.
    let home = limited(&dir, quota(100));
    assert!(
        too_large(home.begin_upload(&p("b"), &req(51))),
        "after a restart, 50 staged + 51 is still over the quota of 100"
    );
    // Resuming moves the staged bytes into the upload's own reservation, counted once.
    let resume = UploadRequest {
        resume: true,
        ..with_id(60, "a")
    };
    let mut up = home.begin_upload(&p("a"), &resume).unwrap();
    assert_eq!(up.offset(), 50);
    assert!(too_large(home.begin_upload(&p("b"), &req(41))));
    up.write([1u8; 10]).unwrap();
    up.commit(Digest::md5(&[1u8; 60]), false).unwrap();
    assert!(
        home.begin_upload(&p("b"), &req(40)).is_ok(),
        "60 used, 40 free"
    );
    // Swept, the staged bytes of another abandoned upload stop counting.
    let mut up = home.begin_upload(&p("c"), &with_id(40, "c")).unwrap();
    up.write([1u8; 40]).unwrap();
    drop(up);
    assert!(too_large(home.begin_upload(&p("b"), &req(1))));
    home.root()
        .sweep_staging(std::time::Duration::ZERO)
        .unwrap();
    assert!(home.begin_upload(&p("b"), &req(40)).is_ok());
}

/// Item 3: a home keeps at most `max_staged` interrupted uploads; one more removes the home's
/// oldest. Uploads in progress are not capped here (the connections bound them).
#[test]
fn staged_uploads_per_home_are_capped() {
    let dir = Site::new();
    let limits = storage::Limits {
        max_staged: Some(2),
        ..Default::default()
    };
    let home = limited(&dir, limits);
    for id in ["one", "two", "three", "four"] {
        let mut up = home.begin_upload(&p(id), &with_id(10, id)).unwrap();
        up.write(b"12345").unwrap();
    }
    assert_eq!(staging_names(&dir).len(), 2, "{:?}", staging_names(&dir));
    let resume = |id: &str| UploadRequest {
        resume: true,
        ..with_id(10, id)
    };
    let resumed = home.begin_upload(&p("four"), &resume("four")).unwrap();
    assert_eq!(resumed.offset(), 5, "the newest is kept");
    let lost = home.begin_upload(&p("one"), &resume("one")).unwrap();
    assert_eq!(lost.offset(), 0, "the oldest made room");
    // Many in progress at once are fine; once interrupted, two stay.
    let more: Vec<_> = ["x", "y", "z"]
        .iter()
        .map(|id| home.begin_upload(&p(id), &with_id(10, id)).unwrap())
        .collect();
    assert_eq!(staging_names(&dir).len(), 6);
    drop((resumed, lost, more));
    assert_eq!(staging_names(&dir).len(), 2);
    // Another home has its own count.
    std::fs::create_dir(dir.path().join("other")).unwrap();
    let other = home.root().home(&p("other")).unwrap();
    for id in ["a", "b"] {
        let mut up = other.begin_upload(&p(id), &with_id(10, id)).unwrap();
        up.write(b"1").unwrap();
    }
    assert_eq!(staging_names(&dir).len(), 4);
}

/// Item 5: sizes from the wire are added with checked arithmetic: a size near 2^64 does not
/// wrap the quota's sum, and sizes above 2^53 are refused up front.
#[test]
fn quota_arithmetic_does_not_wrap() {
    let dir = Site::new();
    let mib = 1u64 << 20;
    let home = limited(&dir, quota(10 * mib));
    let _held = home.begin_upload(&p("a"), &req(8 * mib)).unwrap();
    assert!(too_large(
        home.begin_upload(&p("b"), &req(u64::MAX - 8 * mib + 1))
    ));
    assert!(too_large(home.begin_upload(&p("b"), &req(u64::MAX))));
    assert!(
        too_large(home.begin_upload(&p("b"), &req(3 * mib))),
        "8 MiB reserved + 3 MiB is over the quota of 10 MiB"
    );
    assert!(home.begin_upload(&p("b"), &req(2 * mib)).is_ok());

    let (_dir, unlimited) = setup();
    assert!(too_large(
        unlimited.begin_upload(&p("c"), &req((1 << 53) + 1))
    ));
    assert!(unlimited.begin_upload(&p("c"), &req(1 << 53)).is_ok());
}

/// Item 6: an overwrite is accounted when it commits: the file it replaces is measured then,
/// not at the start, so renaming it away meanwhile does not smuggle bytes past the quota.
#[test]
fn an_overwrite_is_accounted_at_commit() {
    let dir = Site::new();
    std::fs::write(dir.path().join("t"), [0u8; 50]).unwrap();
    let home = limited(&dir, quota(100));
    let r = UploadRequest {
        overwrite: true,
        ..req(80)
    };
    // 50 used; replacing the 50-byte file with 80 bytes grows the root by 30: fits.
    let mut up = home.begin_upload(&p("t"), &r).unwrap();
    up.write([1u8; 80]).unwrap();
    home.rename(&p("t"), &p("u")).unwrap();
    // Now nothing is replaced: 50 + 80 is over the quota.
    assert!(too_large(up.commit(Digest::md5(&[1u8; 80]), true)));
    assert!(!dir.path().join("t").exists());
    assert!(
        home.begin_upload(&p("v"), &req(50)).is_ok(),
        "50 used, 50 free"
    );
}

/// Item 16: `rename` never replaces what is at its target, even one a commit placed there
/// between the rename's check and its move.
#[test]
fn rename_racing_an_upload_never_replaces_it() {
    let (dir, home) = setup();
    let both = std::sync::atomic::AtomicUsize::new(0);
    for round in 0..1500 {
        std::fs::write(dir.path().join("s"), b"renamed").unwrap();
        let _ = std::fs::remove_file(dir.path().join("t"));
        let mut up = home.begin_upload(&p("t"), &req(8)).unwrap();
        up.write(b"uploaded").unwrap();
        let start = std::sync::Barrier::new(2);
        let (put, renamed) = std::thread::scope(|s| {
            let put = s.spawn(|| {
                start.wait();
                up.commit(Digest::md5(b"uploaded"), false).is_ok()
            });
            start.wait();
            let renamed = home.rename(&p("s"), &p("t")).is_ok();
            (put.join().unwrap(), renamed)
        });
        let stored = std::fs::read(dir.path().join("t")).unwrap();
        assert!(put ^ renamed, "round {round}: put {put}, rename {renamed}");
        if put && renamed {
            both.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let expected: &[u8] = if put { b"uploaded" } else { b"renamed" };
        assert_eq!(stored, expected, "round {round}");
        let _ = std::fs::remove_file(dir.path().join("s"));
    }
}

/// Item 11: a FIFO (or device) is refused at once, never opened in a way that blocks.
#[test]
fn reading_a_fifo_is_refused_without_blocking() {
    let (dir, home) = setup();
    let fifo = dir.path().join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    std::os::unix::fs::symlink("fifo", dir.path().join("to-fifo")).unwrap();
    for name in ["fifo", "to-fifo"] {
        let (tx, rx) = std::sync::mpsc::channel();
        let h = home.clone();
        std::thread::spawn(move || {
            let _ = tx.send(h.open_read(&p(name)).map(|_| ()));
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("opening {name} for reading blocked"));
        assert!(matches!(got, Err(Error::NotAFile(_))), "{name}: {got:?}");
    }
}

/// Item 17: a crash between the commit's link and unlink leaves a staging file linked to the
/// live file. A later upload with the same id must not write through it into the live file,
/// and the startup sweep removes such a link.
#[test]
fn a_staging_file_linked_to_a_live_file_is_never_written_through() {
    let (dir, home) = setup();
    let mut up = home.begin_upload(&p("live"), &with_id(4, "same")).unwrap();
    up.write(b"ab").unwrap();
    drop(up);
    let [staged] = <[String; 1]>::try_from(staging_names(&dir)).unwrap();
    let staged = dir.staging().join(staged);
    std::fs::write(&staged, b"live").unwrap();
    // The crash: linked into place, never unlinked from staging.
    std::fs::hard_link(&staged, dir.path().join("live")).unwrap();
    let r = UploadRequest {
        overwrite: true,
        ..with_id(4, "same")
    };
    let mut up = home.begin_upload(&p("live"), &r).unwrap();
    assert_eq!(std::fs::read(dir.path().join("live")).unwrap(), b"live");
    up.write(b"new!").unwrap();
    drop(up);
    assert_eq!(std::fs::read(dir.path().join("live")).unwrap(), b"live");
    // Nor through a resume of it.
    std::fs::remove_file(&staged).unwrap();
    std::fs::hard_link(dir.path().join("live"), &staged).unwrap();
    let r = UploadRequest { resume: true, ..r };
    let up = home.begin_upload(&p("live"), &r).unwrap();
    assert_eq!(up.offset(), 0, "resumed from the live file's bytes");
    drop(up);
    // And the sweep at startup removes such a link, whatever its age.
    let _ = std::fs::remove_file(&staged);
    std::fs::hard_link(dir.path().join("live"), &staged).unwrap();
    let restarted = whole(dir.open());
    restarted
        .root()
        .sweep_staging(std::time::Duration::from_secs(3600))
        .unwrap();
    assert!(staging_names(&dir).is_empty());
    assert_eq!(std::fs::read(dir.path().join("live")).unwrap(), b"live");
}

/// Item 18: the staged bytes of an upload without an id can never be resumed; after a crash
/// (no `Drop`) the startup sweep removes them, whatever their age.
#[test]
fn staged_bytes_without_an_id_are_removed_at_startup() {
    let dir = Site::new();
    let home = whole(dir.open());
    let mut up = home.begin_upload(&p("a"), &req(10)).unwrap();
    up.write(b"12345").unwrap();
    std::mem::forget(up); // kill -9
    assert_eq!(staging_names(&dir).len(), 1);
    let restarted = whole(dir.open());
    restarted
        .root()
        .sweep_staging(std::time::Duration::from_secs(3600))
        .unwrap();
    assert!(staging_names(&dir).is_empty());
}

/// Item 21: files and directories are counted like bytes: over `max_files`, uploads of new
/// files and new directories are refused up front.
#[test]
fn files_and_directories_are_capped() {
    let dir = Site::new();
    std::fs::write(dir.path().join("old"), "1").unwrap();
    let limits = storage::Limits {
        max_files: Some(3),
        ..Default::default()
    };
    let home = limited(&dir, limits);
    home.mkdir(&p("d"), false).unwrap();
    let up = home.begin_upload(&p("d/f"), &req(0)).unwrap();
    // `old`, `d`, and the one in flight counts: a fourth does not fit.
    assert!(too_large(home.begin_upload(&p("g"), &req(0))));
    assert!(too_large(home.mkdir(&p("e"), false)));
    up.commit(Digest::md5(b""), false).unwrap();
    assert!(too_large(home.mkdir(&p("x/y"), true)));
    assert!(
        !dir.path().join("x").exists(),
        "no part of a refused mkdir -p is made"
    );
    // Replacing a file adds none.
    let r = UploadRequest {
        overwrite: true,
        ..req(1)
    };
    let mut up = home.begin_upload(&p("old"), &r).unwrap();
    up.write(b"2").unwrap();
    up.commit(Digest::md5(b"2"), true).unwrap();
    home.remove_file(&p("d/f")).unwrap();
    home.mkdir(&p("e"), false).unwrap();
    assert!(too_large(home.mkdir(&p("e2"), false)));
    home.remove_dir(&p("e")).unwrap();
    assert!(home.begin_upload(&p("g"), &req(0)).is_ok());
    // A restart counts what is there.
    drop(home);
    let home = limited(&dir, limits);
    assert!(home.mkdir(&p("e"), false).is_ok());
    assert!(too_large(home.mkdir(&p("e2"), false)));
}

/// Regression: two users who share a home could continue, and so take over, each other's
/// interrupted uploads by naming the same upload id; the id is now bound to the user too.
#[test]
fn users_sharing_a_home_never_resume_each_others_uploads() {
    let dir = Site::new();
    let root = dir.open();
    std::fs::create_dir(dir.path().join("shared")).unwrap();
    let alice = root.home(&p("shared")).unwrap().for_user("alice");
    let bob = root.home(&p("shared")).unwrap().for_user("bob");
    let mut r = req(6);
    r.upload_id = Some("same-id".into());
    let mut up = alice.begin_upload(&p("f"), &r).unwrap();
    up.write(b"abc").unwrap();
    drop(up);
    r.resume = true;
    let theirs = bob.begin_upload(&p("f"), &r).unwrap();
    assert_eq!(theirs.offset(), 0, "bob continued alice's upload");
    drop(theirs);
    assert_eq!(alice.begin_upload(&p("f"), &r).unwrap().offset(), 3);
}

// ---------------------------------------------------------------------------------------------
// Regressions from the hardening issue: the private state is out of every home's reach.

/// Item 10: the private state (staging, digest records) once lived in the root's `.ftpd`, so
/// a symlink anywhere in the root (`x -> .ftpd`, planted by anyone who can write there) let an
/// anonymous session, whose home is the whole root, read its staged uploads, plant digest
/// records and remove others' uploads. Now no link in the root, to wherever, reaches it.
#[test]
fn a_symlink_in_the_root_reaches_no_staging_or_digest_records() {
    let (dir, home) = setup();
    let mut up = home.begin_upload(&p("a.bin"), &with_id(4, "kept")).unwrap();
    up.write(b"ab").unwrap();
    drop(up);
    let mut done = home.begin_upload(&p("done.bin"), &req(2)).unwrap();
    done.write(b"ok").unwrap();
    done.commit(Digest::md5(b"ok"), false).unwrap();
    let [staged] = <[String; 1]>::try_from(staging_names(&dir)).unwrap();
    let links = [
        (".ftpd".into(), "old"),
        (dir.state(), "abs"),
        ("../state".into(), "rel"),
    ];
    for (target, link) in &links {
        std::os::unix::fs::symlink(target, dir.path().join(link)).unwrap();
    }
    for (_, link) in links {
        for sub in ["", "/staging", "/digests"] {
            let path = p(&format!("{link}{sub}"));
            assert!(home.list(&path).is_err(), "{path} lists the private state");
        }
        let staged_bytes = p(&format!("{link}/staging/{staged}"));
        assert!(
            home.open_read(&staged_bytes).is_err(),
            "{staged_bytes} reads"
        );
        assert!(
            home.remove_file(&staged_bytes).is_err(),
            "{staged_bytes} goes"
        );
        let record = p(&format!("{link}/digests/forged.json"));
        assert!(
            home.begin_upload(&record, &req(1)).is_err(),
            "{record} made"
        );
    }
    assert_eq!(staging_names(&dir), [staged]);
    assert!(!dir.state().join("digests/forged.json").exists());
}

/// Item 10: the state directory must be where no home reaches it and where commits can rename
/// out of it: not the root, not inside it, not holding it; made private to the daemon.
#[test]
fn a_state_directory_in_reach_of_the_root_is_refused() {
    let dir = Site::new();
    let refused = |state: &std::path::Path| match Root::open(dir.path(), state) {
        Err(Error::State { problem, .. }) => problem,
        Err(e) => panic!("{}: {e}", state.display()),
        Ok(_) => panic!("{} was taken as the state directory", state.display()),
    };
    use storage::StateProblem::{HoldsRoot, InsideRoot};
    assert_eq!(refused(dir.path()), InsideRoot);
    assert_eq!(refused(&dir.path().join("state")), InsideRoot);
    assert_eq!(refused(&dir.path().join("a/b")), InsideRoot);
    // Through a symlink outside the root that leads back into it.
    let sneaky = dir.state().with_file_name("sneaky");
    std::os::unix::fs::symlink(dir.path(), &sneaky).unwrap();
    assert_eq!(refused(&sneaky.join("x")), InsideRoot);
    assert_eq!(refused(dir.path().parent().unwrap()), HoldsRoot);
    // A symlink planted where the state goes (beside the root, maybe in /tmp) is not followed.
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), dir.state()).unwrap();
    assert_eq!(refused(&dir.state()), storage::StateProblem::Symlink);
    std::fs::remove_file(dir.state()).unwrap();
    let inside = dir.path().join("state");
    let err = Root::open(dir.path(), &inside).err().unwrap().to_string();
    let named = |p: &std::path::Path| err.contains(&p.display().to_string());
    assert!(
        named(&inside) && named(dir.path()) && !err.contains('\n'),
        "{err}"
    );
    // A good one is made private, also when someone else made it (systemd makes 0755).
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir(dir.state()).unwrap();
    std::fs::set_permissions(dir.state(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir.open();
    let mode = std::fs::metadata(dir.state()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    // By default it lies beside the root.
    let beside = storage::default_state_dir(dir.path()).unwrap();
    assert_eq!(
        beside,
        dir.path()
            .canonicalize()
            .unwrap()
            .with_file_name(".root.ftpd-state")
    );
}

/// Item 10: staging must stay on the root's filesystem, or commits fail (EXDEV).
#[test]
fn a_state_directory_on_another_filesystem_is_refused() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = Site::new();
    let shm = std::path::Path::new("/dev/shm");
    let dev = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    if dev(shm).is_none() || dev(shm) == dev(dir.path()) {
        eprintln!("skipped: no other filesystem at /dev/shm");
        return;
    }
    let other = tempfile::tempdir_in(shm).unwrap();
    match Root::open(dir.path(), other.path()) {
        Err(Error::State { problem, .. }) => {
            assert_eq!(problem, storage::StateProblem::OtherFilesystem)
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a state directory on another filesystem was taken"),
    }
}

/// Item 10: an older version kept its state in `ROOT/.ftpd`; opening the root moves it into
/// the state directory, merged with what is there, so its uploads still resume.
#[test]
fn an_older_roots_private_directory_moves_into_the_state_directory() {
    let (dir, home) = setup();
    let mut up = home.begin_upload(&p("a.bin"), &with_id(4, "kept")).unwrap();
    up.write(b"ab").unwrap();
    drop(up);
    drop(home);
    // As the older version left it.
    std::fs::create_dir(dir.path().join(".ftpd")).unwrap();
    std::fs::rename(dir.staging(), dir.path().join(".ftpd/staging")).unwrap();
    std::fs::rename(
        dir.state().join("digests"),
        dir.path().join(".ftpd/digests"),
    )
    .unwrap();
    let root = dir.open();
    assert!(root.migrated());
    assert!(!dir.path().join(".ftpd").exists());
    assert_eq!(staging_names(&dir).len(), 1);
    let r = UploadRequest {
        resume: true,
        ..with_id(4, "kept")
    };
    let mut up = whole(root.clone()).begin_upload(&p("a.bin"), &r).unwrap();
    assert_eq!(up.offset(), 2, "the migrated bytes resume");
    up.write(b"cd").unwrap();
    up.commit(Digest::md5(b"abcd"), false).unwrap();
    assert_eq!(std::fs::read(dir.path().join("a.bin")).unwrap(), b"abcd");
    drop(root);
    // Into a state that has its own already: merged.
    std::fs::create_dir_all(dir.path().join(".ftpd/staging")).unwrap();
    std::fs::write(dir.path().join(".ftpd/staging/old.part"), "x").unwrap();
    assert!(dir.open().migrated());
    assert!(dir.staging().join("old.part").exists());
    assert!(!dir.path().join(".ftpd").exists());
    // What the older version never made there stops it, saying so.
    std::fs::create_dir_all(dir.path().join(".ftpd/unknown")).unwrap();
    let err = Root::open(dir.path(), &dir.state()).err().unwrap();
    assert!(matches!(err, Error::Migrate { .. }), "{err}");
}

/// Found attacking item 10 again: the digest sweep (at startup, then every quarter of
/// `--staging-max-age`) opened each recorded file to check it, and opening a FIFO for reading
/// waits for a writer: a FIFO put where an uploaded file was hung startup for good.
#[test]
fn the_digest_sweep_does_not_block_on_a_fifo_where_a_recorded_file_was() {
    let (dir, home) = setup();
    let mut up = home.begin_upload(&p("f"), &req(2)).unwrap();
    up.write(b"ok").unwrap();
    up.commit(Digest::md5(b"ok"), false).unwrap();
    std::fs::remove_file(dir.path().join("f")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.path().join("f"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let root = home.root().clone();
    std::thread::spawn(move || {
        let _ = tx.send(root.sweep_digests());
    });
    let removed = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("the digest sweep blocked on a FIFO");
    assert_eq!(removed, 1, "the record of the file that is gone");
}

/// A file changed in place with its size and modification time put back (what a careful
/// script, or `touch -r`, does) no longer matches its record: the change time gives it away.
#[test]
fn a_change_with_the_old_mtime_put_back_voids_the_record() {
    let (dir, root) = setup();
    let data = b"0123456789";
    let mut up = root.begin_upload(&p("f"), &req(10)).unwrap();
    up.write_chunk(data, Digest::md5(data)).unwrap();
    up.commit(Digest::md5(data), false).unwrap();
    assert!(root.open_read(&p("f")).unwrap().recorded.is_some());
    use std::os::unix::fs::MetadataExt as _;
    let path = dir.path().join("f");
    let before = std::fs::metadata(&path).unwrap();
    let mtime = before.modified().unwrap();
    // The change time moves at the kernel's clock tick: change the file until it has moved.
    for _ in 0..1_000_000 {
        std::fs::write(&path, b"9876543210").unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(mtime).unwrap();
        let now = std::fs::metadata(&path).unwrap();
        if (now.ctime(), now.ctime_nsec()) != (before.ctime(), before.ctime_nsec()) {
            break;
        }
    }
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
    assert!(root.open_read(&p("f")).unwrap().recorded.is_none());
}

/// A user's quota on their home (issue 18): counts what the home holds and its uploads in
/// flight, refuses before any byte moves naming the user, leaves the rest of the root alone,
/// and charges nested homes each.
#[test]
fn a_home_quota_counts_its_home_and_nested_homes_are_each_charged() {
    let dir = Site::new();
    std::fs::create_dir_all(dir.path().join("team/alice")).unwrap();
    std::fs::write(dir.path().join("team/old"), [0u8; 40]).unwrap();
    let root = dir.open();
    let limits = |quota| storage::HomeLimits {
        quota: Some(quota),
        max_files: None,
    };
    root.set_home_limits(vec![
        (p("/team"), "team".into(), limits(100)),
        (p("/team/alice"), "alice".into(), limits(50)),
    ]);
    let team = root.home(&p("/team")).unwrap();
    let alice = root.home(&p("/team/alice")).unwrap();
    let rest = whole(root.clone());
    assert_eq!(root.home_usage(&p("/team")).unwrap().bytes, 40);
    let refused = alice
        .begin_upload(&p("a"), &req(51))
        .unwrap_err()
        .to_string();
    assert!(refused.contains("alice's quota of 50"), "{refused}");
    let mut a = alice.begin_upload(&p("a"), &req(50)).unwrap();
    // In flight, alice's 50 count in team's home too: 40 + 50 leave 10.
    assert_eq!(root.home_usage(&p("/team")).unwrap().bytes, 90);
    let refused = team
        .begin_upload(&p("b"), &req(11))
        .unwrap_err()
        .to_string();
    assert!(refused.contains("team's quota of 100"), "{refused}");
    assert!(rest.begin_upload(&p("elsewhere"), &req(1000)).is_ok());
    a.write([1u8; 50]).unwrap();
    a.commit(Digest::md5(&[1u8; 50]), false).unwrap();
    assert_eq!(root.home_usage(&p("/team/alice")).unwrap().bytes, 50);
    team.remove_file(&p("old")).unwrap();
    assert_eq!(root.home_usage(&p("/team")).unwrap().bytes, 50);
    assert!(team.begin_upload(&p("b"), &req(50)).is_ok());
    // Limits dropped: no ledger, no refusal.
    root.set_home_limits(Vec::new());
    assert!(root.home_usage(&p("/team")).is_none());
    assert!(alice.begin_upload(&p("c"), &req(500)).is_ok());
}
