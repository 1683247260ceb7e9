//! Client paths: checked and normalized lexically before they ever touch the filesystem.

use std::fmt;

use crate::{Error, Result};

/// Longest path accepted from a client, in bytes.
pub const MAX_PATH: usize = 4096;
/// Longest single name accepted, in bytes (what most filesystems allow).
pub const MAX_NAME: usize = 255;
/// Where an older version kept the daemon's private state, at the top of the root. No client
/// path may name it at the top of a home, so that whatever the daemon finds at `ROOT/.ftpd`
/// when it starts was left by an older version (or the operator), never planted by a client,
/// and can be moved into the state directory as it is.
pub const PRIVATE_DIR: &str = ".ftpd";

/// A normalized path inside the root: no `.`, `..` or empty names, no leading `/`. The empty
/// path is the root itself. It displays with a leading `/`, as clients see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct VPath(String);

impl VPath {
    /// A path already normalized (as stored in the daemon's own records).
    pub(crate) fn from_rel(rel: &str) -> Self {
        VPath(rel.trim_matches('/').to_owned())
    }

    /// The root.
    pub fn root() -> Self {
        VPath(String::new())
    }

    /// Resolves what a client typed against `cwd`: `/x` starts at the root, `x` at `cwd`.
    pub fn resolve(cwd: &VPath, input: &str) -> Result<VPath> {
        let bad = |reason| {
            Err(Error::BadPath {
                path: input.chars().take(200).collect(),
                reason,
            })
        };
        if input.is_empty() {
            return bad("empty path");
        }
        if input.len() > MAX_PATH {
            return bad("path too long");
        }
        if input.contains('\0') {
            return bad("NUL byte in path");
        }
        if input.contains('\\') {
            return bad("backslash in path");
        }
        if input.chars().any(char::is_control) {
            return bad("control character in path");
        }
        if input.chars().any(is_bidi_control) {
            return bad("bidirectional control character in path");
        }
        let b = input.as_bytes();
        if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
            return bad("drive letters are not paths here");
        }
        let mut parts: Vec<&str> = if input.starts_with('/') {
            Vec::new()
        } else {
            cwd.components().collect()
        };
        for name in input.split('/') {
            match name {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(Error::Denied {
                            path: input.to_owned(),
                            reason: "path leads outside the root",
                        });
                    }
                }
                _ if name.len() > MAX_NAME => return bad("name too long"),
                _ => parts.push(name),
            }
        }
        if parts.first() == Some(&PRIVATE_DIR) {
            return Err(Error::Denied {
                path: input.to_owned(),
                reason: "reserved name",
            });
        }
        Ok(VPath(parts.join("/")))
    }

    /// `rel` taken as a path inside `self` (a user's home and a path the user sees).
    pub fn join(&self, rel: &VPath) -> VPath {
        match (self.is_root(), rel.is_root()) {
            (true, _) => rel.clone(),
            (_, true) => self.clone(),
            _ => VPath(format!("{}/{}", self.0, rel.0)),
        }
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|s| !s.is_empty())
    }

    /// The path relative to the root directory, for `cap_std::fs::Dir` calls ("." for the root).
    pub fn rel(&self) -> &str {
        if self.0.is_empty() {
            "."
        } else {
            &self.0
        }
    }

    /// The parent directory and the last name; the root has neither.
    pub fn split_last(&self) -> Option<(VPath, &str)> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.rsplit_once('/') {
            Some((dir, name)) => (VPath(dir.to_owned()), name),
            None => (VPath::root(), self.0.as_str()),
        })
    }
}

/// Characters that reorder how text is shown: in a name they make `exe.txt` display as
/// `txt.exe` (U+202E) and hide what a listing really holds. No file name needs them. The same
/// set as `protocol::text::is_bidi_control` (storage depends on no wire crate; a test in
/// ftpd checks the two agree).
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Display for VPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(cwd: &str, input: &str) -> std::result::Result<String, String> {
        let cwd = VPath::resolve(&VPath::root(), cwd).unwrap();
        VPath::resolve(&cwd, input)
            .map(|p| p.to_string())
            .map_err(|e| {
                match e {
                    Error::Denied { .. } => "Denied",
                    Error::BadPath { .. } => "BadPath",
                    _ => "other",
                }
                .to_owned()
            })
    }

    #[test]
    fn table() {
        let long_name = "n".repeat(256);
        let long_path = "a/".repeat(2100);
        let cases: &[(&str, &str, std::result::Result<&str, &str>)] = &[
            ("/", "a.txt", Ok("/a.txt")),
            ("/", "/a.txt", Ok("/a.txt")),
            ("/d", "a.txt", Ok("/d/a.txt")),
            ("/d", "/a.txt", Ok("/a.txt")),
            ("/d", "../a.txt", Ok("/a.txt")),
            ("/d", "./x/./y//z/", Ok("/d/x/y/z")),
            ("/d", "x/../../y", Ok("/y")),
            ("/", ".", Ok("/")),
            ("/", "/", Ok("/")),
            ("/", "ünï cødé;$(x)", Ok("/ünï cødé;$(x)")),
            ("/", "..", Err("Denied")),
            ("/", "../etc/passwd", Err("Denied")),
            ("/d", "../../etc/passwd", Err("Denied")),
            ("/", "/../x", Err("Denied")),
            ("/", "a/../../x", Err("Denied")),
            ("/", ".ftpd/staging/x", Err("Denied")),
            ("/", "/.ftpd", Err("Denied")),
            ("/d", "../.ftpd", Err("Denied")),
            ("/", "", Err("BadPath")),
            ("/", "a\0b", Err("BadPath")),
            ("/", "a\\..\\b", Err("BadPath")),
            ("/", "C:\\Windows", Err("BadPath")),
            ("/", "c:/x", Err("BadPath")),
            ("/", "a\nb", Err("BadPath")),
            ("/", "invoice\u{202E}fdp.exe", Err("BadPath")),
            ("/", "a\u{2066}b", Err("BadPath")),
            ("/", "caf\u{e9}", Ok("/caf\u{e9}")),
            ("/", "cafe\u{301}", Ok("/cafe\u{301}")),
            ("/", &long_name, Err("BadPath")),
            ("/", &long_path, Err("BadPath")),
        ];
        for (cwd, input, want) in cases {
            let want = want.map(str::to_owned).map_err(str::to_owned);
            assert_eq!(r(cwd, input), want, "cwd {cwd:?} input {input:?}");
        }
    }

    #[test]
    fn private_dir_is_reserved_only_at_the_top() {
        assert_eq!(r("/", "a/.ftpd"), Ok("/a/.ftpd".into()));
    }

    #[test]
    fn split_last() {
        let p = VPath::resolve(&VPath::root(), "a/b/c").unwrap();
        let (dir, name) = p.split_last().unwrap();
        assert_eq!((dir.to_string().as_str(), name), ("/a/b", "c"));
        assert!(VPath::root().split_last().is_none());
    }
}
