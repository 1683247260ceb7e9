//! Scrubbing a real root: rot found, clean files pass, files without a record are counted.

use checksum::{Digest, DigestKind};
use storage::{Root, Scrubbed, UploadRequest, VPath, Verdict};

fn p(s: &str) -> VPath {
    VPath::resolve(&VPath::root(), s).unwrap()
}

/// A root in a temp dir with its state beside it.
fn site() -> (tempfile::TempDir, Root) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("root")).unwrap();
    let root = Root::open(&dir.path().join("root"), &dir.path().join("state")).unwrap();
    (dir, root)
}

/// Uploads `data` to `path` in chunks of the recorded minimum, each with its running digest,
/// as the transfer engine does: the record keeps the chunks' digests.
fn upload(root: &Root, path: &str, data: &[u8], kind: DigestKind) {
    let home = root.home(&VPath::root()).unwrap();
    let req = UploadRequest {
        size: data.len() as u64,
        overwrite: false,
        upload_id: None,
        resume: false,
        mtime: None,
        digest: kind,
    };
    let mut up = home.begin_upload(&p(path), &req).unwrap();
    let k = storage::MIN_RECORDED_CHUNK as usize;
    let mut end = 0;
    while end < data.len() {
        let start = end;
        end = (start + k).min(data.len());
        up.write_chunk(&data[start..end], Digest::of(kind, &data[..end]))
            .unwrap();
    }
    up.commit(Digest::of(kind, data), false).unwrap();
}

fn scrub(root: &Root) -> Vec<Scrubbed> {
    root.scrub().collect()
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[test]
fn a_clean_root_scrubs_intact() {
    let (_dir, root) = site();
    let k = storage::MIN_RECORDED_CHUNK as usize;
    upload(&root, "a.bin", &data(2 * k + 7), DigestKind::Md5);
    root.home(&VPath::root())
        .unwrap()
        .mkdir(&p("d"), false)
        .unwrap();
    upload(&root, "d/b.bin", &data(10), DigestKind::Blake3);
    let found = scrub(&root);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found.iter().all(|f| f.verdict == Verdict::Intact),
        "{found:?}"
    );
}

/// Bit rot: the bytes change, the inode's times do not (simulated by rewriting the record with
/// the file's stamp after the flip). The scrub says damaged, and from which chunk.
#[test]
fn a_rotted_byte_is_damage_found_in_its_chunk() {
    let (_dir, root) = site();
    let k = storage::MIN_RECORDED_CHUNK as usize;
    upload(&root, "a.bin", &data(3 * k), DigestKind::Md5);
    upload(&root, "b.bin", &data(100), DigestKind::Blake3);
    root.rot_byte_for_tests(&p("a.bin"), k as u64 + 5).unwrap();
    root.rot_byte_for_tests(&p("b.bin"), 0).unwrap();
    let found = scrub(&root);
    assert_eq!(
        found[0],
        Scrubbed {
            path: "/a.bin".into(),
            verdict: Verdict::Damaged {
                from: Some(k as u64)
            }
        }
    );
    assert_eq!(found[1].verdict, Verdict::Damaged { from: Some(0) });
}

/// A byte changed through the file system, even with the size and mtime put back, has a new
/// change time: its record no longer describes it, and the scrub cannot tell a rot from an
/// edit, so it says unverifiable. Rerecording it makes it intact again.
#[test]
fn a_file_changed_through_the_file_system_is_unverifiable_until_rerecorded() {
    use std::io::{Seek, SeekFrom, Write};
    let (dir, root) = site();
    upload(&root, "a.bin", &data(1000), DigestKind::Md5);
    std::fs::write(dir.path().join("root/unrecorded"), b"x").unwrap();
    let on_disk = dir.path().join("root/a.bin");
    let mtime = std::fs::metadata(&on_disk).unwrap().modified().unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&on_disk)
        .unwrap();
    f.seek(SeekFrom::Start(10)).unwrap();
    f.write_all(b"\xff").unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    let found = scrub(&root);
    assert_eq!(found.len(), 2);
    assert!(
        found
            .iter()
            .all(|f| matches!(f.verdict, Verdict::Unverifiable(_))),
        "{found:?}"
    );
    let digest = root.rerecord(&p("a.bin"), DigestKind::Blake3).unwrap();
    assert_eq!(
        digest,
        Digest::of(DigestKind::Blake3, &std::fs::read(&on_disk).unwrap())
    );
    let found = scrub(&root);
    assert_eq!(found[0].path, "/a.bin");
    assert_eq!(found[0].verdict, Verdict::Intact);
}

/// A symlink in the root is neither followed nor opened, even to a file outside it.
#[test]
fn symlinks_are_not_followed() {
    let (dir, root) = site();
    std::fs::write(dir.path().join("outside"), b"secret").unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside"), dir.path().join("root/link")).unwrap();
    std::os::unix::fs::symlink(dir.path(), dir.path().join("root/dirlink")).unwrap();
    assert!(scrub(&root).is_empty());
    assert!(root.rerecord(&p("link"), DigestKind::Md5).is_err());
}

/// A report marks a recorded file once, however often it comes; a file without a record is not
/// marked. Each suspect then settles as damaged, intact or gone, and rerecording clears a mark.
#[test]
fn reported_files_are_marked_once_and_settle_by_verdict() {
    use storage::{Marked, Suspect};
    let (dir, root) = site();
    let home = root.home(&VPath::root()).unwrap();
    home.mkdir(&p("u"), false).unwrap();
    let user = root.home(&p("u")).unwrap();
    upload(&root, "u/rot.bin", &data(5000), DigestKind::Md5);
    upload(&root, "u/fine.bin", &data(300), DigestKind::Md5);
    upload(&root, "u/gone.bin", &data(30), DigestKind::Md5);
    std::fs::write(dir.path().join("root/u/by-hand"), b"x").unwrap();
    root.rot_byte_for_tests(&p("u/rot.bin"), 4000).unwrap();

    // Paths are the user's (their home is `/`); marks name them in the root.
    assert_eq!(
        user.report_damaged(&p("rot.bin"), Some(0)).unwrap(),
        Marked::New
    );
    assert_eq!(
        user.report_damaged(&p("rot.bin"), None).unwrap(),
        Marked::Already
    );
    assert_eq!(
        user.report_damaged(&p("by-hand"), None).unwrap(),
        Marked::Unrecorded
    );
    assert!(matches!(
        user.report_damaged(&p("missing"), None),
        Err(storage::Error::NotFound(_))
    ));
    assert!(user.report_damaged(&p("/"), None).is_err());
    for f in ["fine.bin", "gone.bin"] {
        assert_eq!(user.report_damaged(&p(f), None).unwrap(), Marked::New);
    }
    std::fs::remove_file(dir.path().join("root/u/gone.bin")).unwrap();
    let suspects = root.suspects();
    assert_eq!(
        suspects,
        vec![
            Suspect {
                path: p("u/fine.bin"),
                offset: None
            },
            Suspect {
                path: p("u/gone.bin"),
                offset: None
            },
            Suspect {
                path: p("u/rot.bin"),
                offset: Some(0)
            },
        ]
    );
    let verdicts: Vec<Verdict> = suspects.iter().map(|s| root.check_path(&s.path)).collect();
    assert_eq!(
        verdicts,
        vec![
            Verdict::Intact,
            Verdict::Gone,
            Verdict::Damaged { from: Some(0) }
        ]
    );
    assert!(verdicts.iter().all(Verdict::settles));
    root.clear_suspect(&p("u/fine.bin"));
    root.clear_suspect(&p("u/gone.bin"));
    assert_eq!(root.suspects().len(), 1);
    root.rerecord(&p("u/rot.bin"), DigestKind::Md5).unwrap();
    assert!(root.suspects().is_empty(), "rerecord clears the mark");
}

/// The marks are bounded: past MAX_SUSPECTS a report is not kept, and the list read back
/// never holds more.
#[test]
fn the_suspects_list_is_bounded() {
    use storage::{Marked, MAX_SUSPECTS};
    let (dir, root) = site();
    upload(&root, "a.bin", &data(100), DigestKind::Md5);
    let marks = dir.path().join("state/suspects");
    for i in 0..MAX_SUSPECTS {
        std::fs::write(
            marks.join(format!("{i}.json")),
            format!(r#"{{"path":"f{i}"}}"#),
        )
        .unwrap();
    }
    let home = root.home(&VPath::root()).unwrap();
    assert_eq!(
        home.report_damaged(&p("a.bin"), None).unwrap(),
        Marked::Full
    );
    assert_eq!(root.suspects().len(), MAX_SUSPECTS);
    root.clear_suspect(&p("f0"));
    std::fs::remove_file(marks.join("0.json")).unwrap();
    assert_eq!(home.report_damaged(&p("a.bin"), None).unwrap(), Marked::New);
}
