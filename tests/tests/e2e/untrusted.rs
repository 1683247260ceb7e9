//! The client does not trust the server: names a lying server lists never make it write outside
//! the directory it was told to write in, and resuming a download never renames or changes the
//! user's own file before the server has confirmed it.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use protocol::{
    Digest, DigestKind, Entry, EntryKind, Eof, GetReady, Hello, ListEnd, Listing, Message, PathArg,
    VERSION,
};

use crate::raw::Raw;
use crate::util::{assert_missing, names, tmpdir, write_file, Cli, Daemon};

/// What the lying server sends for every file the client asks for.
const BODY: &[u8] = b"what the server sent\n";

/// A server that lies: `list` of a directory in its table answers with that directory's entries
/// (any other with none), every `get` from byte 0 with [`BODY`], and every resumed `get` by
/// confirming whatever prefix the client holds and then sending [`BODY`] as if it followed
/// (its chunk digest cannot be right: it does not know the prefix). It speaks frames by hand
/// ([`Raw`]), one thread per connection; stopped on drop.
struct Liar {
    /// Where it listens (127.0.0.1, port 0).
    addr: SocketAddr,
    /// Tells the accept loop to end; set on drop, which then wakes it with a connection.
    stop: Arc<AtomicBool>,
    /// The accept loop.
    accept: Option<JoinHandle<()>>,
}

impl Liar {
    fn start(listings: Vec<(&str, Vec<Entry>)>) -> Liar {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the lying server");
        let addr = listener.local_addr().unwrap();
        let listings: Arc<Vec<(String, Vec<Entry>)>> = Arc::new(
            listings
                .into_iter()
                .map(|(dir, entries)| (dir.to_owned(), entries))
                .collect(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let accept = thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let listings = listings.clone();
                thread::spawn(move || serve(stream, &listings));
            }
        });
        Liar {
            addr,
            stop,
            accept: Some(accept),
        }
    }

    fn cli(&self) -> Cli {
        Cli::new(self.addr)
    }
}

impl Drop for Liar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// One connection to the lying server, until the client says bye or goes.
fn serve(stream: TcpStream, listings: &[(String, Vec<Entry>)]) {
    let mut peer = Raw::from(stream);
    while let Some(message) = peer.try_recv() {
        match message {
            Message::Hello(_) => peer.send(&Message::Hello(Hello {
                version: VERSION,
                agent: "liar/0".into(),
                capabilities: vec![],
                max_chunk: protocol::DEFAULT_CHUNK,
                digest: DigestKind::Md5,
            })),
            Message::List(PathArg { path }) => {
                let entries = listings
                    .iter()
                    .find(|(dir, _)| *dir == path)
                    .map(|(_, entries)| entries.clone())
                    .unwrap_or_default();
                let count = entries.len() as u64;
                peer.send(&Message::Listing(Listing { entries }));
                peer.send(&Message::ListEnd(ListEnd { count }));
            }
            Message::Get(get) if get.offset == 0 => {
                let size = BODY.len() as u64;
                peer.send(&Message::GetReady(GetReady {
                    size,
                    offset: 0,
                    mtime: None,
                }));
                peer.send_chunk(0, BODY);
                peer.send(&Message::Eof(Eof {
                    size,
                    digest: Digest::md5(BODY),
                }));
            }
            Message::Get(get) => {
                let size = get.offset + BODY.len() as u64;
                peer.send(&Message::GetReady(GetReady {
                    size,
                    offset: get.offset,
                    mtime: None,
                }));
                peer.send_chunk(get.offset, BODY);
                peer.send(&Message::Eof(Eof {
                    size,
                    digest: Digest::md5(BODY),
                }));
            }
            Message::Pwd | Message::Cd(_) => peer.send(&Message::Cwd(PathArg { path: "/".into() })),
            Message::Bye => return,
            // Nothing else is asked of it; a stray cancel needs no answer.
            _ => {}
        }
    }
}

fn file(name: &str) -> Entry {
    Entry {
        name: name.into(),
        kind: EntryKind::File,
        size: BODY.len() as u64,
        mtime: None,
    }
}

fn dir(name: &str) -> Entry {
    Entry {
        name: name.into(),
        kind: EntryKind::Dir,
        size: 0,
        mtime: None,
    }
}

/// Every file and directory under `top`, relative to it, `/`-joined and sorted.
fn tree(top: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![String::new()];
    while let Some(rel) = pending.pop() {
        for name in names(top.join(&rel)) {
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if top.join(&child).is_dir() {
                pending.push(child.clone());
            }
            out.push(child);
        }
    }
    out.sort();
    out
}

/// Names that would put a file outside `./dl` (or draw on the terminal), as a lying server
/// lists them; `outside` is an absolute path the test watches.
fn hostile_names(outside: &Path) -> Vec<String> {
    vec![
        "../../x".into(),
        outside.join("abs.txt").display().to_string(),
        "..".into(),
        ".".into(),
        String::new(),
        "a\\b".into(),
        "bell\x07\x1b]0;owned\x07".into(),
        "nul\0byte".into(),
    ]
}

/// The regression: `get -r` wrote a listed `../../x` two levels above `./dl`, and an absolute
/// name where it pointed; a listed directory `../escape` was made beside `./dl` and filled.
#[test]
fn get_r_never_writes_outside_its_destination_whatever_names_the_server_lists() {
    let top = tmpdir();
    let work = top.path().join("work");
    fs::create_dir(&work).unwrap();
    let mut entries: Vec<Entry> = hostile_names(top.path()).iter().map(|n| file(n)).collect();
    entries.extend([file("ok.txt"), dir("../escape"), dir(".."), dir("sub")]);
    let liar = Liar::start(vec![
        ("d", entries),
        ("d/../escape", vec![file("f.txt")]),
        ("d/sub", vec![file("../../../y"), file("deep.txt")]),
    ]);

    let run = liar
        .cli()
        .cwd(&work)
        .arg("--retries")
        .arg("0")
        .cmds("get -r d dl")
        .run();
    assert_eq!(names(top.path()), ["work"], "written outside ./dl: {run}");
    assert_eq!(names(&work), ["dl"], "written outside ./dl: {run}");
    let run = run
        .exits(8)
        .stderr_has("\"../../x\": not a plain file name")
        .stderr_has("\"../escape\"")
        .stderr_has("\"../../../y\"");
    // Every hostile name is named, escaped: no raw control character reaches the terminal.
    assert!(
        !run.stderr.contains('\x07') && !run.stderr.contains('\x1b'),
        "a control character from the server reached stderr: {run}"
    );
    assert!(
        run.stderr.contains("11 of 13 files failed"),
        "each refused name should count as a failed file: {run}"
    );
    assert_eq!(
        tree(&work),
        ["dl", "dl/ok.txt", "dl/sub", "dl/sub/deep.txt"],
        "{run}"
    );
    assert_eq!(fs::read(work.join("dl/ok.txt")).unwrap(), BODY);
}

/// The regression: `mget *` matched a listed `../../x` and `/abs/path` and wrote them there.
#[test]
fn mget_never_writes_outside_the_current_directory_whatever_names_the_server_lists() {
    let top = tmpdir();
    let dl = top.path().join("work/dl");
    fs::create_dir_all(&dl).unwrap();
    let mut entries: Vec<Entry> = hostile_names(top.path()).iter().map(|n| file(n)).collect();
    entries.push(file("ok.txt"));
    let liar = Liar::start(vec![(".", entries)]);

    let run = liar
        .cli()
        .cwd(&dl)
        .arg("--retries")
        .arg("0")
        .cmds("mget *")
        .run();
    assert_eq!(names(top.path()), ["work"], "written outside ./dl: {run}");
    assert_eq!(names(top.path().join("work")), ["dl"], "{run}");
    let run = run
        .exits(8)
        .stderr_has("\"../../x\": not a plain file name");
    let abs = format!("{:?}", top.path().join("abs.txt").display().to_string());
    assert!(run.stderr.contains(&abs), "{abs} not named: {run}");
    assert_eq!(names(&dl), ["ok.txt"], "{run}");
}

/// Only hostile names: nothing to fetch is still a batch whose files all failed (8), not a
/// usage error, and nothing is written.
#[test]
fn mget_of_only_hostile_names_fails_as_a_batch() {
    let top = tmpdir();
    let liar = Liar::start(vec![(".", vec![file("../x"), file("/etc/x")])]);
    let run = liar.cli().cwd(top.path()).cmds("mget *").run().exits(8);
    assert!(run.stderr.contains("2 of 2 files failed"), "{run}");
    assert!(names(top.path()).is_empty(), "{run}");
}

/// A daemon holding `remote` (if given) and a client directory holding `precious.txt`.
fn site(remote: Option<&[u8]>, local: &[u8]) -> (Daemon, tempfile::TempDir) {
    let daemon = Daemon::start();
    if let Some(contents) = remote {
        write_file(daemon.path("precious.txt"), contents);
    }
    let work = tmpdir();
    write_file(work.path().join("precious.txt"), local);
    (daemon, work)
}

/// The regression: `reget precious.txt` for a file the server does not have renamed the local
/// `precious.txt` to `precious.txt.ftp-part` and left it there.
#[test]
fn reget_of_a_file_the_server_lacks_leaves_the_local_file_alone() {
    let (daemon, work) = site(None, b"my own words\n");
    let local = work.path().join("precious.txt");
    let before = fs::metadata(&local).unwrap();
    for cmd in [
        "reget precious.txt",
        "get -c precious.txt",
        "get -c -f precious.txt",
    ] {
        daemon
            .cli()
            .cwd(work.path())
            .cmds(cmd)
            .run()
            .exits(5)
            .stderr_has("not_found");
        assert_eq!(fs::read(&local).unwrap(), b"my own words\n", "{cmd}");
        assert_eq!(names(work.path()), ["precious.txt"], "{cmd}");
        let after = fs::metadata(&local).unwrap();
        assert_eq!(after.ino(), before.ino(), "{cmd} replaced the file");
        assert_eq!(after.mtime(), before.mtime(), "{cmd} changed the file");
    }
}

/// The regression: `reget` of a file already complete renamed it to `.ftp-part` and back (after
/// hashing it in silence), and a Ctrl-C in between left it renamed.
#[test]
fn reget_of_a_complete_file_says_so_and_changes_nothing() {
    let (daemon, work) = site(Some(b"all of it\n"), b"all of it\n");
    let local = work.path().join("precious.txt");
    let before = fs::metadata(&local).unwrap();
    let run = daemon
        .cli()
        .cwd(work.path())
        .cmds("reget precious.txt")
        .run()
        .ok();
    assert!(
        run.stdout.contains("already complete"),
        "reget does not say the file is complete: {run}"
    );
    assert_eq!(fs::read(&local).unwrap(), b"all of it\n");
    assert_eq!(names(work.path()), ["precious.txt"]);
    let after = fs::metadata(&local).unwrap();
    assert_eq!(after.ino(), before.ino(), "reget replaced the file");
    assert_eq!(after.mtime(), before.mtime(), "reget changed the file");
    assert_eq!(after.ctime(), before.ctime(), "reget renamed the file");
}

/// A local file that is not the start of the server's is refused and left as it was; with `-f`
/// it is replaced, but only by a verified copy.
#[test]
fn reget_of_a_different_file_leaves_it_until_a_verified_copy_replaces_it() {
    let (daemon, work) = site(Some(b"the server's version\n"), b"mine\n");
    let local = work.path().join("precious.txt");
    daemon
        .cli()
        .cwd(work.path())
        .cmds("reget precious.txt")
        .run()
        .exits(5)
        .stderr_has("not the start");
    assert_eq!(fs::read(&local).unwrap(), b"mine\n");
    assert_eq!(names(work.path()), ["precious.txt"]);

    daemon
        .cli()
        .cwd(work.path())
        .cmds("get -c -f precious.txt")
        .run()
        .ok();
    assert_eq!(fs::read(&local).unwrap(), b"the server's version\n");
    assert_eq!(names(work.path()), ["precious.txt"]);
}

/// A true prefix made some other way is still continued where it lies, and nothing is left.
#[test]
fn reget_continues_a_partial_copy_made_another_way() {
    let (daemon, work) = site(Some(b"first half, second half\n"), b"first half, ");
    let run = daemon
        .cli()
        .cwd(work.path())
        .cmds("reget precious.txt")
        .run()
        .ok();
    assert!(run.stdout.contains("of it sent this time"), "{run}");
    assert_eq!(
        fs::read(work.path().join("precious.txt")).unwrap(),
        b"first half, second half\n"
    );
    assert_eq!(names(work.path()), ["precious.txt"]);
    assert_missing(work.path().join("precious.txt.ftp-part"));
}

/// A server that confirms any prefix and then sends nothing that passes: the user's partial copy
/// was made the `.ftp-part` on the server's word and stayed so after the failure (and after each
/// retry). Now it goes back where it was when nothing was gained.
#[test]
fn reget_confirmed_by_a_lying_server_leaves_the_local_file_where_it_was() {
    let work = tmpdir();
    let local = work.path().join("precious.txt");
    write_file(&local, b"my own words\n");
    let liar = Liar::start(vec![]);
    let run = liar
        .cli()
        .cwd(work.path())
        .arg("--retries")
        .arg("1")
        .cmds("reget precious.txt")
        .run()
        .exits(7)
        .stderr_has("failed its md5 check");
    assert_eq!(names(work.path()), ["precious.txt"], "{run}");
    assert_eq!(fs::read(&local).unwrap(), b"my own words\n", "{run}");
}
