//! Fuzzes the three parsers that take text from a peer or a person:
//!
//! 1. the input bytes as a frame's JSON header: `serde_json::from_slice::<protocol::Message>`.
//!    A message that parses must serialize, and that JSON must parse back to an equal message
//!    (and serialize to the very same bytes again: serialization is canonical).
//! 2. the input as text (invalid UTF-8 replaced by U+FFFD) as a client command line:
//!    `ftp_cli::command::parse_line` must not panic; neither may `help` for a `help TOPIC`.
//! 3. the same text as a client path: `storage::VPath::resolve` from the root and from a
//!    sub-directory must not panic, and an `Ok` path must be confined and normalized: it
//!    displays with a leading `/`, has no empty, `.` or `..` component, does not begin with the
//!    private `.ftpd` directory, has no NUL, backslash or control character, no name longer than
//!    `MAX_NAME`, and resolving its display form again gives the same path.
//!
//! "No `..`" is checked per component: a name such as `...` or `a..b` is an ordinary file
//! name, not a way up. Likewise only a first component equal to `.ftpd` is private;
//! `/.ftpdx` is another name.
#![no_main]

use ftp_cli::command::{self, Command};
use libfuzzer_sys::fuzz_target;
use protocol::Message;
use storage::{VPath, MAX_NAME, PRIVATE_DIR};

fn json(data: &[u8]) {
    let Ok(message) = serde_json::from_slice::<Message>(data) else {
        return;
    };
    let json = serde_json::to_vec(&message)
        .unwrap_or_else(|e| panic!("parsed message does not serialize: {e}: {message:?}"));
    let back: Message = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!(
            "serialized message does not parse: {e}: {}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(back, message, "message changed in a JSON round trip");
    let again = serde_json::to_vec(&back).expect("serializes");
    assert_eq!(again, json, "serialization is not canonical");
}

fn command_line(line: &str) {
    if let Ok(commands) = command::parse_line(line) {
        for c in commands {
            if let Command::Help(topic) = c {
                let _ = command::help(topic.as_deref());
            }
        }
    }
}

fn check_resolved(cwd: &VPath, input: &str) {
    let Ok(path) = VPath::resolve(cwd, input) else {
        return;
    };
    let shown = path.to_string();
    let ctx = || format!("cwd {cwd} input {input:?} gave {shown:?}");
    assert!(shown.starts_with('/'), "no leading slash: {}", ctx());
    if shown != "/" {
        let names: Vec<&str> = shown[1..].split('/').collect();
        for name in &names {
            assert!(
                !name.is_empty() && *name != "." && *name != "..",
                "unnormalized component {name:?}: {}",
                ctx()
            );
            assert!(name.len() <= MAX_NAME, "name too long: {}", ctx());
        }
        assert_ne!(
            names[0],
            PRIVATE_DIR,
            "private directory reachable: {}",
            ctx()
        );
    }
    assert!(
        !shown
            .chars()
            .any(|c| c == '\0' || c == '\\' || c.is_control()),
        "forbidden character: {}",
        ctx()
    );
    assert_eq!(
        path.components().count(),
        if path.is_root() {
            0
        } else {
            shown[1..].split('/').count()
        }
    );
    let again = VPath::resolve(&VPath::root(), &shown)
        .unwrap_or_else(|e| panic!("display form does not resolve again ({e}): {}", ctx()));
    assert_eq!(
        again,
        path,
        "resolving the display form changes the path: {}",
        ctx()
    );
}

fuzz_target!(|data: &[u8]| {
    json(data);

    let text = String::from_utf8_lossy(data);
    command_line(&text);

    check_resolved(&VPath::root(), &text);
    let sub = VPath::resolve(&VPath::root(), "/d/e").expect("a plain path resolves");
    check_resolved(&sub, &text);
});
