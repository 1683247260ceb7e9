//! The users file: who may connect, proving what (a password verifier, a public key), confined
//! to which home. The file holds no password: a SCRAM verifier costs a slow key derivation per
//! guess, and a key's fingerprint is public.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use hmac::{Hmac, Mac};
use protocol::scram::{self, Verifier};
use protocol::tls::Fingerprint;
use serde::Deserialize;
use sha2::Sha256;
use storage::{Root, VPath};

/// Iterations of the verifier made at load for an old `secret` entry: the fewest SCRAM allows,
/// so that loading stays quick; such entries are on their way out.
const LEGACY_ITERATIONS: u32 = scram::MIN_ITERATIONS;

/// The file as written (TOML, one `[[user]]` table per user).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<UserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    /// The SCRAM-SHA-256 verifier `ftpd passwd` writes.
    password: Option<String>,
    /// Old form: the password itself (one more version).
    secret: Option<String>,
    /// Old form: a file holding the password (one more version).
    secret_file: Option<PathBuf>,
    /// Fingerprints of the public keys that may log in as this user.
    #[serde(default)]
    keys: Vec<String>,
    home: String,
    #[serde(default)]
    read_only: bool,
    /// Bytes per second in each direction, for all the user's sessions together.
    max_rate: Option<Size>,
    /// Uploads (client to server), over `max_rate`.
    max_rate_up: Option<Size>,
    /// Downloads (server to client), over `max_rate`.
    max_rate_down: Option<Size>,
    /// Bytes the files in the home may take, uploads in flight and staged bytes included.
    quota: Option<Size>,
    /// Files and directories the home may hold.
    max_files: Option<u64>,
    /// Sessions the user may have open at once.
    max_sessions: Option<u32>,
}

/// A size as the users file gives it: a number of bytes, or a string such as `"20MiB"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn bytes(&self, user: &str, field: &str) -> anyhow::Result<u64> {
        match self {
            Size::Bytes(n) => Ok(*n),
            Size::Text(s) => parse_size::Config::new()
                .with_binary()
                .parse_size(s)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "user {user}: {field} {s:?}: {e} (try \"20MiB\" or a number of bytes)"
                    )
                }),
        }
    }
}

/// What one user may use, all optional. Rates are bytes per second for each direction on its
/// own, shared by all the user's sessions and connections together: `max_rate` sets both
/// directions, `max_rate_up` (uploads) and `max_rate_down` (downloads) override it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Uploads, bytes per second.
    pub rate_up: Option<u64>,
    /// Downloads, bytes per second.
    pub rate_down: Option<u64>,
    /// Bytes the home may hold.
    pub quota: Option<u64>,
    /// Files and directories the home may hold.
    pub max_files: Option<u64>,
    /// Sessions open at once.
    pub max_sessions: Option<u32>,
}

impl UserEntry {
    /// A row of the database in the users file's form, so that both are checked by one code.
    fn of_row(row: &pgstate::UserRow) -> UserEntry {
        let size = |n: Option<u64>| n.map(Size::Bytes);
        UserEntry {
            name: row.name.clone(),
            password: row.verifier.clone(),
            secret: None,
            secret_file: None,
            keys: row.keys.clone(),
            home: row.home.clone(),
            read_only: row.read_only,
            max_rate: None,
            max_rate_up: size(row.limits.rate_up),
            max_rate_down: size(row.limits.rate_down),
            quota: size(row.limits.quota),
            max_files: row.limits.max_files,
            max_sessions: row.limits.max_sessions,
        }
    }

    /// The limits as written, checked; an error names the user and the field.
    fn limits(&self) -> anyhow::Result<Limits> {
        let name = &self.name;
        let size = |v: &Option<Size>, field: &str| -> anyhow::Result<Option<u64>> {
            v.as_ref().map(|v| v.bytes(name, field)).transpose()
        };
        let positive = |v: Option<u64>, field: &str| -> anyhow::Result<Option<u64>> {
            match v {
                Some(0) => {
                    bail!("user {name}: {field} must be more than 0 (leave it out for no limit)")
                }
                v => Ok(v),
            }
        };
        let rate = positive(size(&self.max_rate, "max_rate")?, "max_rate")?;
        let up = positive(size(&self.max_rate_up, "max_rate_up")?, "max_rate_up")?;
        let down = positive(size(&self.max_rate_down, "max_rate_down")?, "max_rate_down")?;
        if self.max_sessions == Some(0) {
            bail!("user {name}: max_sessions must be more than 0 (leave it out for no limit)");
        }
        Ok(Limits {
            rate_up: up.or(rate),
            rate_down: down.or(rate),
            quota: size(&self.quota, "quota")?,
            max_files: self.max_files,
            max_sessions: self.max_sessions,
        })
    }
}

/// One account.
#[derive(Debug)]
pub struct User {
    pub name: String,
    /// What a password login is checked against; `None`: keys only.
    pub verifier: Option<Verifier>,
    /// The public keys that log in as this user, by fingerprint.
    pub keys: Vec<Fingerprint>,
    /// The user's directory inside the root; everything they see is beneath it.
    pub home: VPath,
    /// Downloads only: every write is `denied`.
    pub read_only: bool,
    /// Given by an old `secret` or `secret_file` entry, which still holds the password.
    pub legacy: bool,
    /// Rates, quota and session cap (a reload changes them without ending sessions).
    pub limits: Limits,
}

impl User {
    /// Whether `other` logs in the same way into the same home: a session of one may go on
    /// as the other after a reload.
    pub fn same_login(&self, other: &User) -> bool {
        self.verifier == other.verifier && self.keys == other.keys && self.home == other.home
    }
}

/// Every account, by name.
#[derive(Debug, Default)]
pub struct Users {
    by_name: HashMap<String, Arc<User>>,
    /// The iteration count most verifiers have: what a name without one is offered, so that
    /// SCRAM's first answer does not tell it apart.
    iterations: u32,
}

impl Users {
    /// Reads and checks the users file, creating missing homes inside `root`. Refuses files
    /// (the users file, a secret file) that others than the owner may read.
    pub fn load(path: &Path, root: Option<&Root>, salt_key: &[u8; 32]) -> anyhow::Result<Users> {
        check_private(path, "users file")?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read users file {}", path.display()))?;
        let file: UsersFile = toml::from_str(&text)
            .with_context(|| format!("users file {} is not valid", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Users::of_entries(file.user, base, root, salt_key)
    }

    /// The users as the database holds them (`--database`), checked as the users file is,
    /// creating missing homes inside `root`.
    pub fn from_rows(
        rows: &pgstate::UsersSnapshot,
        root: Option<&Root>,
        salt_key: &[u8; 32],
    ) -> anyhow::Result<Users> {
        let entries = rows.users.iter().map(UserEntry::of_row).collect();
        Users::of_entries(entries, Path::new("."), root, salt_key)
    }

    /// Checks entries and makes users of them; `base` is what a secret file's path is
    /// relative to.
    fn of_entries(
        entries: Vec<UserEntry>,
        base: &Path,
        root: Option<&Root>,
        salt_key: &[u8; 32],
    ) -> anyhow::Result<Users> {
        let mut by_name = HashMap::new();
        for entry in entries {
            let limits = entry.limits()?;
            let name = entry.name;
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                bail!("user {name:?}: names are 1 to 64 printable characters");
            }
            let legacy = match (entry.secret, entry.secret_file) {
                (Some(s), None) => Some(s.into_bytes()),
                (None, Some(f)) => {
                    let f = base.join(f);
                    check_private(&f, "secret file")?;
                    let text = std::fs::read(&f)
                        .with_context(|| format!("user {name}: cannot read {}", f.display()))?;
                    Some(trim_newline(text))
                }
                (None, None) => None,
                _ => bail!("user {name}: give at most one of password, secret or secret_file"),
            };
            if legacy.as_ref().is_some_and(|s| s.is_empty()) {
                bail!("user {name}: the secret is empty");
            }
            let verifier = match (entry.password, &legacy) {
                (Some(v), None) => Some(v.parse::<Verifier>().map_err(|e| {
                    anyhow::anyhow!("user {name}: password: {e} (set it with ftpd passwd)")
                })?),
                (None, Some(secret)) => Some(legacy_verifier(salt_key, &name, secret)),
                (None, None) => None,
                (Some(_), Some(_)) => {
                    bail!("user {name}: give at most one of password, secret or secret_file")
                }
            };
            let keys = entry
                .keys
                .iter()
                .map(|k| {
                    k.parse::<Fingerprint>()
                        .map_err(|e| anyhow::anyhow!("user {name}: key {k:?}: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            if verifier.is_none() && keys.is_empty() {
                bail!("user {name}: no way to log in: set a password (ftpd passwd) or give keys");
            }
            let home = VPath::resolve(&VPath::root(), &entry.home)
                .map_err(|e| anyhow::anyhow!("user {name}: home {:?}: {e}", entry.home))?;
            // On an object store a home is a prefix, there without being made.
            if let Some(root) = root {
                root.create_dir_all(&home)
                    .with_context(|| format!("user {name}: cannot create home {home}"))?;
            }
            let user = User {
                name: name.clone(),
                verifier,
                keys,
                home,
                read_only: entry.read_only,
                legacy: legacy.is_some(),
                limits,
            };
            if by_name.insert(name.clone(), Arc::new(user)).is_some() {
                bail!("user {name} is defined twice");
            }
        }
        let iterations = typical_iterations(&by_name);
        Ok(Users {
            by_name,
            iterations,
        })
    }

    /// The iteration count to offer a name that has no verifier.
    pub fn iterations(&self) -> u32 {
        if self.iterations == 0 {
            scram::DEFAULT_ITERATIONS
        } else {
            self.iterations
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<User>> {
        self.by_name.get(name)
    }

    /// The users whose entry still holds the password itself, sorted.
    pub fn legacy(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .by_name
            .values()
            .filter(|u| u.legacy)
            .map(|u| u.name.as_str())
            .collect();
        names.sort_unstable();
        names
    }

    /// Every account, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<User>> {
        self.by_name.values()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// The verifier of an old entry's password, the same at every load (its salt is the one a
/// name without a verifier is offered), so that a reload does not end the user's sessions.
fn legacy_verifier(salt_key: &[u8; 32], name: &str, secret: &[u8]) -> Verifier {
    Verifier::new(secret, &made_up_salt(salt_key, name), LEGACY_ITERATIONS)
}

/// The salt of a name that has no salt of its own: HMAC-SHA-256 of the name under the daemon's
/// key of login salts, its first 16 bytes. The same at every attempt and restart, and known
/// to nobody without the key.
pub fn made_up_salt(salt_key: &[u8; 32], name: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(salt_key).expect("HMAC takes keys of any length");
    mac.update(name.as_bytes());
    mac.finalize().into_bytes()[..16].to_vec()
}

/// The iteration count most verifiers have (the larger on a tie); 0 without any.
fn typical_iterations(users: &HashMap<String, Arc<User>>) -> u32 {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for v in users.values().filter_map(|u| u.verifier.as_ref()) {
        *counts.entry(v.iterations).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|&(iterations, n)| (n, iterations))
        .map_or(0, |(iterations, _)| iterations)
}

/// Secrets are compared byte for byte; a file's one trailing newline is not part of it.
pub fn trim_newline(mut text: Vec<u8>) -> Vec<u8> {
    if text.ends_with(b"\n") {
        text.pop();
        if text.ends_with(b"\r") {
            text.pop();
        }
    }
    text
}

#[cfg(unix)]
pub(crate) fn check_private(path: &Path, what: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "{what} {} is open to group or others (mode {:o}); run: chmod 600 {}",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
pub(crate) fn check_private(_: &Path, _: &str) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn load(text: &str, mode: u32) -> anyhow::Result<Users> {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path(), state.path()).unwrap();
        write(dir.path(), "alice.secret", "from file\n", 0o600);
        let p = write(dir.path(), "users.toml", text, mode);
        Users::load(&p, Some(&root), &[0; 32])
    }

    /// The database's rows are checked by the users file's code: the same limits, the same
    /// refusals.
    #[test]
    fn rows_of_the_database_load_as_the_file_does() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path(), state.path()).unwrap();
        let verifier = Verifier::generate(b"pw", scram::MIN_ITERATIONS).to_string();
        let row = |name: &str, verifier: Option<String>, home: &str| pgstate::UserRow {
            name: name.into(),
            verifier,
            keys: Vec::new(),
            home: home.into(),
            read_only: true,
            limits: pgstate::Limits {
                rate_up: Some(1 << 20),
                max_sessions: Some(2),
                ..Default::default()
            },
        };
        let rows = |users| pgstate::UsersSnapshot { version: 7, users };
        let users = Users::from_rows(
            &rows(vec![row("alice", Some(verifier.clone()), "homes/alice")]),
            Some(&root),
            &[0; 32],
        )
        .unwrap();
        let alice = users.get("alice").unwrap();
        assert!(alice.read_only && alice.verifier.is_some());
        assert_eq!(alice.limits.rate_up, Some(1 << 20));
        assert_eq!(alice.limits.rate_down, None);
        assert_eq!(alice.limits.max_sessions, Some(2));
        assert!(dir.path().join("homes/alice").is_dir());
        let bad = [
            (row("bob", Some("not a verifier".into()), "bob"), "password"),
            (row("eve", Some(verifier.clone()), "../out"), "home"),
            (row("nil", None, "nil"), "no way to log in"),
        ];
        for (row, why) in bad {
            let e = Users::from_rows(&rows(vec![row]), Some(&root), &[0; 32]).unwrap_err();
            assert!(format!("{e:#}").contains(why), "{e:#}");
        }
    }

    #[test]
    fn loads_users_and_creates_homes() {
        let users = load(
            r#"
            [[user]]
            name = "alice"
            secret_file = "alice.secret"
            home = "alice"
            [[user]]
            name = "bob"
            secret = "b"
            home = "shared/bob"
            read_only = true
            "#,
            0o600,
        )
        .unwrap();
        let alice = users.get("alice").unwrap();
        assert!(alice.legacy);
        let expected = legacy_verifier(&[0; 32], "alice", b"from file");
        assert_eq!(alice.verifier.as_ref(), Some(&expected));
        assert!(!format!("{alice:?}").contains("from file"));
        assert_eq!(users.legacy(), ["alice", "bob"]);
        assert!(users.get("bob").unwrap().read_only);
        assert_eq!(users.get("bob").unwrap().home.to_string(), "/shared/bob");
    }

    #[test]
    fn verifiers_and_keys_need_no_password() {
        let verifier = Verifier::generate(b"pw", scram::MIN_ITERATIONS);
        let key = Fingerprint::of_spki(b"a key");
        let text = format!(
            "[[user]]\nname='carol'\npassword='{verifier}'\nkeys=['{key}']\nhome='c'\n\
             [[user]]\nname='dave'\nkeys=['{key}']\nhome='d'\n"
        );
        let users = load(&text, 0o600).unwrap();
        let carol = users.get("carol").unwrap();
        assert_eq!(carol.verifier.as_ref(), Some(&verifier));
        assert_eq!(carol.keys, [key]);
        assert!(!carol.legacy && users.legacy().is_empty());
        assert_eq!(
            users.iterations(),
            scram::MIN_ITERATIONS,
            "carol's is the only verifier"
        );
        assert!(users.get("dave").unwrap().verifier.is_none());
    }

    #[test]
    fn limits_are_read_and_max_rate_is_each_direction_unless_overridden() {
        let users = load(
            r#"
            [[user]]
            name = "a"
            secret = "s"
            home = "a"
            max_rate = "2MiB"
            max_rate_down = 1000
            quota = "10GiB"
            max_files = 5
            max_sessions = 3
            [[user]]
            name = "b"
            secret = "t"
            home = "b"
            "#,
            0o600,
        )
        .unwrap();
        let a = users.get("a").unwrap().limits;
        assert_eq!(a.rate_up, Some(2 << 20));
        assert_eq!(a.rate_down, Some(1000));
        assert_eq!(a.quota, Some(10 << 30));
        assert_eq!((a.max_files, a.max_sessions), (Some(5), Some(3)));
        assert_eq!(users.get("b").unwrap().limits, Limits::default());
    }

    #[test]
    fn refusals() {
        let cases = [
            ("[[user]]\nname='a'\nsecret='s'\nhome='a'\n", 0o644, "chmod 600"),
            ("[[user]]\nname='a'\nsecret='s'\nhome='../out'\n", 0o600, "outside the root"),
            ("[[user]]\nname='a'\nsecret='s'\nhome='a'\nshell='x'\n", 0o600, "not valid"),
            ("[[user]]\nname='a'\nhome='a'\n", 0o600, "no way to log in"),
            ("[[user]]\nname='a'\nsecret='s'\npassword='x'\nhome='a'\n", 0o600, "at most one"),
            ("[[user]]\nname='a'\npassword='plain'\nhome='a'\n", 0o600, "ftpd passwd"),
            ("[[user]]\nname='a'\nkeys=['SHA256:x']\nhome='a'\n", 0o600, "fingerprint"),
            ("[[user]]\nname='a'\nsecret=''\nhome='a'\n", 0o600, "empty"),
            (
                "[[user]]\nname='al'\nsecret='s'\nhome='a'\nquota='lots'\n",
                0o600,
                "user al: quota \"lots\"",
            ),
            (
                "[[user]]\nname='al'\nsecret='s'\nhome='a'\nmax_rate_up='0'\n",
                0o600,
                "user al: max_rate_up must be more than 0",
            ),
            (
                "[[user]]\nname='al'\nsecret='s'\nhome='a'\nmax_sessions=0\n",
                0o600,
                "user al: max_sessions",
            ),
            (
                "[[user]]\nname='a'\nsecret='s'\nhome='a'\n[[user]]\nname='a'\nsecret='t'\nhome='b'\n",
                0o600,
                "twice",
            ),
        ];
        for (text, mode, needle) in cases {
            let err = format!("{:#}", load(text, mode).unwrap_err());
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
