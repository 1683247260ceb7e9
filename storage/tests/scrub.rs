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
