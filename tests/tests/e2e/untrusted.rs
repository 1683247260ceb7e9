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
use std::time::Duration;

use protocol::{
    Digest, DigestKind, Entry, EntryKind, Eof, ErrorCode, ErrorReply, GetReady, Hello, ListEnd,
    Listing, Message, PathArg, Stat, StatReply, VERSION,
};

use crate::raw::{encode, Raw};
use crate::util::{assert_missing, names, tmpdir, write_file, Cli, Daemon};

/// What the lying server sends for every file the client asks for.
const BODY: &[u8] = b"what the server sent\n";

/// A server that lies: `list` answers with whatever [`Lies::list`] makes of the path, every
/// `get` from byte 0 with [`BODY`], and every resumed `get` by confirming whatever prefix the
/// client holds and then sending [`BODY`] as if it followed (its chunk digest cannot be right:
/// it does not know the prefix); wherever it names something (the directory, `stat`'s entry,
/// an error's message) it says [`Lies::says`]. It speaks frames by hand ([`Raw`]), one thread
/// per connection; stopped on drop.
///
/// `stat PATH` describes the first entry `list PATH` would give (else a file named as it says).
struct Liar {
    /// Where it listens (127.0.0.1, port 0).
    addr: SocketAddr,
    /// Tells the accept loop to end; set on drop, which then wakes it with a connection.
    stop: Arc<AtomicBool>,
    /// The accept loop.
    accept: Option<JoinHandle<()>>,
}

/// What a lying server lists for a path.
type Lister = Box<dyn Fn(&str) -> Vec<Entry> + Send + Sync>;

/// What the lying server answers, besides the file it sends.
struct Lies {
    /// The entries `list PATH` answers with, however many.
    list: Lister,
    /// Its word wherever the protocol has the server name something: the directory `pwd` and
    /// `cd` answer with, the name `stat` gives its entry, the message of each error (it refuses
    /// `rm`, `mkdir`, `rmdir` and `rename`).
    says: String,
}

impl Liar {
    /// A lying server whose listings are `listings` (a directory not in it is empty).
    fn start(listings: Vec<(&str, Vec<Entry>)>) -> Liar {
        let listings: Vec<(String, Vec<Entry>)> = listings
            .into_iter()
            .map(|(dir, entries)| (dir.to_owned(), entries))
            .collect();
        Liar::lying(Lies {
            list: Box::new(move |path| {
                listings
                    .iter()
                    .find(|(dir, _)| *dir == path)
                    .map(|(_, entries)| entries.clone())
                    .unwrap_or_default()
            }),
            says: "/".into(),
        })
    }

    fn lying(lies: Lies) -> Liar {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the lying server");
        let addr = listener.local_addr().unwrap();
        let lies = Arc::new(lies);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let accept = thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let lies = lies.clone();
                thread::spawn(move || serve(stream, &lies));
            }
        });
        Liar {
            addr,
            stop,
            accept: Some(accept),
        }
    }

    /// The real client aimed at the liar, trusting its key: what it tests is what the client
    /// does with a server it has reason to trust.
    fn cli(&self) -> Cli {
        Cli::new(self.addr)
            .arg("--fingerprint")
            .arg(crate::tls::identity().fingerprint.to_string())
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
fn serve(stream: TcpStream, lies: &Lies) {
    let Some(mut peer) = Raw::tls_server(stream) else {
        return;
    };
    while let Some(message) = peer.try_recv() {
        match message {
            Message::Hello(_) => peer.send(&Message::Hello(Hello {
                version: VERSION,
                min_version: None,
                agent: "liar/0".into(),
                capabilities: vec![],
                max_chunk: protocol::DEFAULT_CHUNK,
                digest: DigestKind::Md5,
            })),
            Message::List(protocol::List { path, .. }) => {
                let sent = send_listing(&mut peer, (lies.list)(&path));
                if !sent {
                    return; // the client stopped reading: it refused the listing
                }
            }
            Message::Get(get) if get.offset == 0 => {
                let size = BODY.len() as u64;
                peer.send(&Message::GetReady(GetReady {
                    size,
                    offset: 0,
                    mtime: None,
                    recorded: false,
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
                    recorded: false,
                }));
                peer.send_chunk(get.offset, BODY);
                peer.send(&Message::Eof(Eof {
                    size,
                    digest: Digest::md5(BODY),
                }));
            }
            Message::Pwd | Message::Cd(_) => peer.send(&Message::Cwd(PathArg {
                path: lies.says.clone(),
            })),
            Message::Stat(Stat { path, .. }) => peer.send(&Message::StatReply(StatReply {
                entry: (lies.list)(&path)
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| file(&lies.says)),
                md5: None,
            })),
            Message::Rm(_) | Message::Mkdir(_) | Message::Rmdir(_) | Message::Rename(_) => peer
                .send(&Message::Error(ErrorReply::new(
                    ErrorCode::Denied,
                    lies.says.clone(),
                ))),
            Message::Bye => return,
            // Nothing else is asked of it; a stray cancel needs no answer.
            _ => {}
        }
    }
}

/// Sends `entries` as a listing, in batches that fit a frame header (a name longer than a
/// batch goes alone), and its end; false once the client has stopped reading.
fn send_listing(peer: &mut Raw, entries: Vec<Entry>) -> bool {
    let count = entries.len() as u64;
    let mut batch = Vec::new();
    let mut bytes = 0;
    for e in entries {
        // A generous guess at the entry's JSON: its name, escaped at worst, and the rest.
        let size = e.name.len() * 6 + 64;
        if !batch.is_empty() && bytes + size > protocol::LISTING_BATCH_BYTES {
            let entries = std::mem::take(&mut batch);
            if !peer.try_send_bytes(&encode(&Message::Listing(Listing { entries }))) {
                return false;
            }
            bytes = 0;
        }
        bytes += size;
        batch.push(e);
    }
    let last = encode(&Message::Listing(Listing { entries: batch }));
    peer.try_send_bytes(&last) && peer.try_send_bytes(&encode(&Message::ListEnd(ListEnd { count })))
}

fn file(name: &str) -> Entry {
    Entry {
        name: name.into(),
        kind: EntryKind::File,
        size: BODY.len() as u64,
        mtime: None,
        digest: None,
    }
}

fn dir(name: &str) -> Entry {
    Entry {
        name: name.into(),
        kind: EntryKind::Dir,
        size: 0,
        mtime: None,
        digest: None,
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
            .stderr_has("no such file or directory")
            .no_internals();
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

/// A lying server whose every listing, of any path, is `list(path)`, and which says `says`.
fn liar(list: impl Fn(&str) -> Vec<Entry> + Send + Sync + 'static, says: &str) -> Liar {
    Liar::lying(Lies {
        list: Box::new(list),
        says: says.into(),
    })
}

/// The client's cap on one listing's entries (`ftp_cli::client::MAX_LISTING_ENTRIES`).
const MAX_LISTING_ENTRIES: usize = 1_000_000;

/// The regression: `ls` of a listing took every entry the server sent, without end, so a
/// server could exhaust the client's memory. One entry past the cap is refused, and nothing of
/// the listing is printed.
#[test]
fn ls_of_a_listing_past_the_entry_cap_is_refused() {
    let liar = liar(
        |_| {
            (0..=MAX_LISTING_ENTRIES)
                .map(|i| file(&i.to_string()))
                .collect()
        },
        "/",
    );
    let run = liar.cli().cmds("ls big").run();
    assert_eq!(
        run.status.code(),
        Some(7),
        "ls of {} entries printed {} lines; stderr: {}",
        MAX_LISTING_ENTRIES + 1,
        run.stdout.lines().count(),
        run.stderr
    );
    assert!(
        run.stdout.is_empty(),
        "{} lines",
        run.stdout.lines().count()
    );
    let run = run.stderr_has("listing of big holds more than 1000000 entries, the client's cap");
    assert_eq!(run.stderr.lines().count(), 1, "{run}");
}

/// The regression's other half: a few long names take as much memory as many short ones, so
/// the bytes of names are capped too (64 MiB).
#[test]
fn ls_of_a_listing_past_the_name_bytes_cap_is_refused() {
    // Each name alone nearly fills a frame header; 1,200 of them are 72 MB.
    let liar = liar(
        |_| {
            (0..1200)
                .map(|i| file(&format!("{i:04}{}", "n".repeat(60_000))))
                .collect()
        },
        "/",
    );
    let run = liar.cli().cmds("ls long").run();
    assert_eq!(
        run.status.code(),
        Some(7),
        "ls printed {} lines; stderr: {}",
        run.stdout.lines().count(),
        run.stderr
    );
    run.stderr_has("listing of long holds more than 67108864 bytes of names, the client's cap");
}

/// Every directory under `top`, `top` itself not counted.
fn dirs_under(top: &Path) -> usize {
    let mut count = 0;
    let mut pending = vec![top.to_owned()];
    while let Some(dir) = pending.pop() {
        for e in fs::read_dir(&dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                count += 1;
                pending.push(e.path());
            }
        }
    }
    count
}

/// The regression: `get -r` of a server whose every directory lists twenty thousand more made
/// directories without end (its depth cap of 64 bounds nothing at that breadth). It stops at a
/// million entries taken, with fifty directories made.
#[test]
fn get_r_of_an_endlessly_wide_tree_stops_at_the_entry_cap() {
    let work = tmpdir();
    const WIDE: usize = 20_000;
    let liar = liar(|_| (0..WIDE).map(|i| dir(&format!("d{i}"))).collect(), "/");
    let run = liar
        .cli()
        .cwd(work.path())
        .timeout(Duration::from_secs(120))
        .cmds("get -r wide dl")
        .run()
        .exits(7)
        .stderr_has(
            "get -r wide: the server lists more than 1000000 files and directories under it, \
             the client's cap",
        );
    let made = dirs_under(&work.path().join("dl"));
    assert!(
        made <= MAX_LISTING_ENTRIES / WIDE + 1,
        "{made} directories made: {run}"
    );
}

/// What a hostile server puts in every name and message it sends: an OSC that retitles the
/// window, a CSI (7-bit and 8-bit) that clears the screen, a bidirectional override that makes
/// `invoice\u{202e}fdp.exe` read as `invoiceexe.pdf`, an isolate, a carriage return.
const HOSTILE: &str = "\x1b]0;owned\x07\x1b[2J\u{9b}2J invoice\u{202e}fdp.exe\u{2066}\r";
/// [`HOSTILE`] as the client shows it.
const HOSTILE_SHOWN: &str =
    r"\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}2J invoice\u{202e}fdp.exe\u{2066}\r";

/// Panics if `text` holds a character of [`HOSTILE`] that acts on a terminal.
#[track_caller]
fn assert_nothing_acts_on_a_terminal(text: &str, what: &str) {
    let raw: Vec<char> = text
        .chars()
        .filter(|c| "\x1b\x07\r\u{9b}\u{202e}\u{2066}".contains(*c))
        .collect();
    assert!(raw.is_empty(), "{what} holds {raw:?} raw: {text:?}");
}

/// The regression: `ls`, `ls -l`, `stat`, `pwd` and the server's error messages printed what
/// the server sent as it was, so its escape sequences and bidirectional overrides reached the
/// user's terminal. Each is shown escaped.
#[test]
fn server_text_reaches_the_terminal_escaped() {
    let liar = liar(|_| vec![file(HOSTILE), dir(HOSTILE)], HOSTILE);
    for cmd in ["ls", "ls -l", "stat x", "pwd", "cd x; pwd"] {
        let run = liar.cli().cmds(cmd).run().ok();
        assert_nothing_acts_on_a_terminal(&run.stdout, cmd);
        assert!(run.stdout.contains(HOSTILE_SHOWN), "{cmd}: {run}");
    }
    for cmd in ["rm x", "mkdir x", "rmdir x", "rename x y", "rm x y"] {
        let run = liar.cli().cmds(cmd).run().fails();
        assert_nothing_acts_on_a_terminal(&run.stderr, cmd);
        assert!(run.stderr.contains(HOSTILE_SHOWN), "{cmd}: {run}");
    }
}

/// `--json` stays exact JSON: every name parses back to what the server sent, bidirectional
/// controls included (they are JSON like any letter), yet no control character is raw in it,
/// not even DEL or a C1 control, which JSON need not escape (serde_json did not).
#[test]
fn json_listings_are_exact_and_hold_no_raw_control_character() {
    // In the order `ls` sorts them.
    let names = [HOSTILE, "csi\u{9b}31m", "del\u{7f}", "nel\u{85}"];
    let liar = liar(move |_| names.iter().map(|n| file(n)).collect(), "/");
    let run = liar.cli().arg("--json").cmds("ls").run().ok();
    assert!(
        !run.stdout.contains(|c: char| c.is_control() && c != '\n'),
        "a control character is raw in the JSON: {:?}",
        run.stdout
    );
    let listed: Vec<String> = run
        .stdout
        .lines()
        .map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap();
            entry["name"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(listed, names, "{run}");
    assert!(run.stdout.contains('\u{202e}'), "{run}");
}

/// The regression: the prompt showed the remote directory as the server named it, so a `cd`
/// answered with an OSC retitled the user's window, every time the prompt was drawn.
#[test]
fn the_prompt_shows_the_servers_directory_escaped() {
    use rexpect::session::{spawn_with_options, Options};
    let home = tmpdir();
    let liar = liar(|_| Vec::new(), HOSTILE);
    let mut cmd = std::process::Command::new(crate::util::bin("ftp-cli"));
    cmd.arg(liar.addr.to_string())
        .arg("--fingerprint")
        .arg(crate::tls::identity().fingerprint.to_string())
        .current_dir(home.path())
        .env("HOME", home.path())
        .env("XDG_DATA_HOME", home.path().join("data"))
        .env("TERM", "xterm")
        .env("NO_COLOR", "1");
    let options = Options::new()
        .timeout_ms(Some(30_000))
        .strip_ansi_escape_codes(false);
    let mut sh = spawn_with_options(cmd, options).expect("cannot start ftp-cli on a terminal");
    sh.exp_string("> ").expect("no first prompt");
    sh.send_line("cd x").unwrap();
    // Everything up to the first `owned` is the prompt that names the new directory.
    let before = sh.exp_string("owned").expect("no prompt after cd");
    assert!(
        before.ends_with(r"\u{1b}]0;"),
        "the prompt holds the server's OSC raw: {before:?}"
    );
    let after = sh.exp_string("> ").expect("the prompt does not end");
    assert_nothing_acts_on_a_terminal(&after, "the prompt");
    sh.send_line("quit").unwrap();
    sh.exp_eof().expect("the shell did not quit");
}

/// The regression: a name with a bidirectional override (`invoice\u{202e}fdp.exe`, shown as
/// `invoiceexe.pdf`) was downloaded under that name; it is refused like `../x`.
#[test]
fn mget_refuses_names_with_bidirectional_controls() {
    let work = tmpdir();
    let tricks = [
        "invoice\u{202e}fdp.exe",
        "a\u{2067}b",
        "mark\u{200f}",
        "alm\u{61c}",
    ];
    let liar = liar(
        move |_| {
            let mut entries: Vec<Entry> = tricks.iter().map(|n| file(n)).collect();
            entries.push(file("ok.txt"));
            entries
        },
        "/",
    );
    let run = liar
        .cli()
        .cwd(work.path())
        .cmds("mget *")
        .run()
        .exits(8)
        .stderr_has("not a plain file name");
    assert!(run.stderr.contains("4 of 5 files failed"), "{run}");
    assert_nothing_acts_on_a_terminal(&run.stderr, "stderr");
    assert_eq!(names(work.path()), ["ok.txt"], "{run}");
}

/// What someone who can write the download directory leaves at `x.ftp-part`, pointing at (or
/// being) another file.
#[derive(Debug, Clone, Copy)]
enum Trap {
    /// A symlink to the file.
    Symlink,
    /// A second hard link to the file.
    HardLink,
    /// A FIFO, which a write would block on once its buffer is full.
    Fifo,
}

/// The regression: `get x` opened `x.ftp-part` following a symlink there (and through a second
/// hard link), so the download truncated and overwrote the file it pointed at. Each is refused
/// with a clear error, for every way of getting, and the file it points at is left as it was.
#[test]
fn get_never_writes_through_a_trapped_part_file() {
    for trap in [Trap::Symlink, Trap::HardLink, Trap::Fifo] {
        for cmd in ["get x", "get -f x", "get -c x", "reget x"] {
            let top = tmpdir();
            let work = top.path().join("work");
            fs::create_dir(&work).unwrap();
            let victim = top.path().join("victim");
            write_file(&victim, b"the user's own words\n");
            let part = work.join("x.ftp-part");
            match trap {
                Trap::Symlink => std::os::unix::fs::symlink(&victim, &part).unwrap(),
                Trap::HardLink => fs::hard_link(&victim, &part).unwrap(),
                Trap::Fifo => {
                    let made = std::process::Command::new("mkfifo")
                        .arg(&part)
                        .status()
                        .unwrap();
                    assert!(made.success(), "mkfifo failed");
                }
            }
            let liar = Liar::start(vec![]);
            let run = liar
                .cli()
                .cwd(&work)
                .timeout(Duration::from_secs(60))
                .arg("--retries")
                .arg("0")
                .cmds(cmd)
                .run();
            assert_eq!(
                fs::read(&victim).unwrap(),
                b"the user's own words\n",
                "{trap:?}, {cmd}: written through: {run}"
            );
            let why = match trap {
                Trap::Symlink => "a symlink, not a regular file",
                Trap::HardLink => "a file with other hard links",
                Trap::Fifo => "not a regular file",
            };
            let run = run.exits(6).stderr_has(why);
            assert_eq!(names(&work), ["x.ftp-part"], "{trap:?}, {cmd}: {run}");
        }
    }
}

/// The regression: `reget x` where `x` is a symlink took the file it points at for a partial
/// copy, made the symlink the `.ftp-part`, and appended the rest of the server's file to the
/// file it points at. No lie is needed: the server has a file that starts the same.
#[test]
fn reget_never_resumes_through_a_symlink() {
    let top = tmpdir();
    let work = top.path().join("work");
    fs::create_dir(&work).unwrap();
    let victim = top.path().join("victim");
    write_file(&victim, b"the user's own words\n");
    std::os::unix::fs::symlink(&victim, work.join("x")).unwrap();
    let daemon = Daemon::start();
    write_file(
        daemon.path("x"),
        b"the user's own words\nand the server's\n",
    );
    for cmd in ["reget x", "get -c x", "get -c -f x"] {
        let run = daemon
            .cli()
            .cwd(&work)
            .arg("--retries")
            .arg("0")
            .cmds(cmd)
            .run();
        assert_eq!(
            fs::read(&victim).unwrap(),
            b"the user's own words\n",
            "{cmd}: written through: {run}"
        );
        let run = run.exits(6).stderr_has("a symlink, not a partial copy");
        assert_eq!(names(&work), ["x"], "{cmd}: {run}");
        assert!(fs::symlink_metadata(work.join("x")).unwrap().is_symlink());
    }
}

/// The regression: `ls -l` and `stat` of an entry whose modification time is past the year 9999
/// (or past what `SystemTime` holds) crashed the client: the date could not be formatted.
#[test]
fn listed_times_past_the_year_9999_are_shown_as_unknown() {
    let at = |name: &str, mtime| Entry {
        mtime: Some(mtime),
        ..file(name)
    };
    let liar = liar(
        move |_| {
            vec![
                at("a-max", i64::MAX),
                at("b-year-10000", 253_402_300_800),
                at("c-min", i64::MIN),
                at("d-last-second", 253_402_300_799),
            ]
        },
        "/",
    );
    let run = liar.cli().cmds("ls -l").run().ok();
    let unknown = "-".repeat(19);
    for name in ["a-max", "b-year-10000", "c-min"] {
        let line = run.stdout.lines().find(|l| l.ends_with(name)).unwrap();
        assert!(line.contains(&unknown), "{line}: {run}");
    }
    assert!(run.stdout.contains("9999-12-31 23:59:59"), "{run}");
    let run = liar.cli().cmds("stat a").run().ok();
    assert!(run.stdout.contains(&unknown), "{run}");
}

/// The regression: `mget` of files the server lists as 2^64 - 1 bytes each added their sizes
/// for the overall progress bar and overflowed (a panic in a debug build, a wrong total in a
/// release one). The sizes are the server's word only: each file is what it sends.
#[test]
fn mget_of_files_listed_as_huge_adds_their_sizes_without_overflow() {
    let work = tmpdir();
    let huge = |name: &str| Entry {
        size: u64::MAX,
        ..file(name)
    };
    let liar = liar(move |_| vec![huge("a"), huge("b"), huge("c")], "/");
    let run = liar
        .cli()
        .cwd(work.path())
        .arg("-P")
        .arg("1")
        .cmds("mget *")
        .run()
        .ok();
    assert_eq!(names(work.path()), ["a", "b", "c"], "{run}");
    assert_eq!(fs::read(work.path().join("c")).unwrap(), BODY);
}
