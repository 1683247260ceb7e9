//! The users file: who may connect, with which secret, confined to which home.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use serde::Deserialize;
use storage::{Root, VPath};

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
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    home: String,
    #[serde(default)]
    read_only: bool,
}

/// A shared secret. Its `Debug` never shows it, so it cannot reach a log by accident.
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One account.
#[derive(Debug)]
pub struct User {
    pub name: String,
    pub secret: Secret,
    /// The user's directory inside the root; everything they see is beneath it.
    pub home: VPath,
    /// Downloads only: every write is `denied`.
    pub read_only: bool,
}

/// Every account, by name.
#[derive(Debug, Default)]
pub struct Users {
    by_name: HashMap<String, Arc<User>>,
}

impl Users {
    /// Reads and checks the users file, creating missing homes inside `root`. Refuses files
    /// (the users file, a secret file) that others than the owner may read.
    pub fn load(path: &Path, root: &Root) -> anyhow::Result<Users> {
        check_private(path, "users file")?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read users file {}", path.display()))?;
        let file: UsersFile = toml::from_str(&text)
            .with_context(|| format!("users file {} is not valid", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut by_name = HashMap::new();
        for entry in file.user {
            let name = entry.name;
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                bail!("user {name:?}: names are 1 to 64 printable characters");
            }
            let secret = match (entry.secret, entry.secret_file) {
                (Some(s), None) => s.into_bytes(),
                (None, Some(f)) => {
                    let f = base.join(f);
                    check_private(&f, "secret file")?;
                    let text = std::fs::read(&f)
                        .with_context(|| format!("user {name}: cannot read {}", f.display()))?;
                    trim_newline(text)
                }
                _ => bail!("user {name}: give exactly one of secret or secret_file"),
            };
            if secret.is_empty() {
                bail!("user {name}: the secret is empty");
            }
            let home = VPath::resolve(&VPath::root(), &entry.home)
                .map_err(|e| anyhow::anyhow!("user {name}: home {:?}: {e}", entry.home))?;
            root.create_dir_all(&home)
                .with_context(|| format!("user {name}: cannot create home {home}"))?;
            let user = User {
                name: name.clone(),
                secret: Secret(secret),
                home,
                read_only: entry.read_only,
            };
            if by_name.insert(name.clone(), Arc::new(user)).is_some() {
                bail!("user {name} is defined twice");
            }
        }
        Ok(Users { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<User>> {
        self.by_name.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
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
fn check_private(path: &Path, what: &str) -> anyhow::Result<()> {
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
fn check_private(_: &Path, _: &str) -> anyhow::Result<()> {
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
        Users::load(&p, &root)
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
        assert_eq!(alice.secret.expose(), b"from file");
        assert_eq!(format!("{:?}", alice.secret), "Secret(***)");
        assert!(users.get("bob").unwrap().read_only);
        assert_eq!(users.get("bob").unwrap().home.to_string(), "/shared/bob");
    }

    #[test]
    fn refusals() {
        let cases = [
            ("[[user]]\nname='a'\nsecret='s'\nhome='a'\n", 0o644, "chmod 600"),
            ("[[user]]\nname='a'\nsecret='s'\nhome='../out'\n", 0o600, "outside the root"),
            ("[[user]]\nname='a'\nsecret='s'\nhome='a'\nshell='x'\n", 0o600, "not valid"),
            ("[[user]]\nname='a'\nhome='a'\n", 0o600, "exactly one"),
            ("[[user]]\nname='a'\nsecret=''\nhome='a'\n", 0o600, "empty"),
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
