//! `ftpd passwd` and `ftpd adduser`: change the users file without a text editor and without
//! ever writing a password into it (only its SCRAM verifier). `ftpd scrub` and `ftpd rerecord`:
//! check stored files against the digests recorded at upload, and record a file changed on
//! purpose.
//!
//! The file is rewritten atomically (a temporary file beside it, synced, renamed over it) with
//! its mode 0600 and everything else in it, comments included, kept as it was. A running
//! daemon picks the change up on SIGHUP (`systemctl reload ftpd`).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use protocol::scram::{self, Verifier};
use protocol::tls::Fingerprint;
use toml_edit::{value, Array, ArrayOfTables, DocumentMut, Item, Table};

use crate::users::check_private;

/// Manage the users file.
#[derive(Parser, Debug)]
#[command(name = "ftpd", args_override_self = true)]
pub struct Admin {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Set or change a user's password: asked twice without echo (read from stdin when it is
    /// not a terminal); only its SCRAM-SHA-256 verifier is written.
    Passwd {
        #[command(flatten)]
        users: Accounts,
        /// Iterations of the key derivation (each guess at a stolen verifier costs as much).
        #[arg(long, default_value_t = scram::DEFAULT_ITERATIONS,
              value_parser = clap::value_parser!(u32).range(i64::from(scram::MIN_ITERATIONS)..=i64::from(scram::MAX_ITERATIONS)))]
        iterations: u32,
        /// The user.
        name: String,
    },
    /// Add a user: with a password (asked as for passwd) unless only keys are given.
    Adduser {
        /// Where the users are (a users file is made, mode 0600, if missing).
        #[command(flatten)]
        users: Accounts,
        /// The user's directory inside the root (default: the user's name).
        #[arg(long)]
        home: Option<String>,
        /// Downloads only.
        #[arg(long)]
        read_only: bool,
        /// A public key that logs in as this user (SHA256:..., as `ftp-cli keygen` prints);
        /// may be repeated. With keys and no --password, no password is set.
        #[arg(long = "key", value_name = "SHA256:...")]
        keys: Vec<Fingerprint>,
        /// Ask for a password too, when keys are given.
        #[arg(long)]
        password: bool,
        /// Bytes per second in each direction, for all the user's sessions together (on every
        /// instance of a service together), e.g. 10MiB.
        #[arg(long, value_name = "RATE", value_parser = parse_size)]
        max_rate: Option<u64>,
        /// Sessions the user may have open at once.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max_sessions: Option<u32>,
        /// Bytes the user's home may hold, e.g. 10GiB.
        #[arg(long, value_name = "BYTES", value_parser = parse_size)]
        quota: Option<u64>,
        /// Iterations of the key derivation.
        #[arg(long, default_value_t = scram::DEFAULT_ITERATIONS,
              value_parser = clap::value_parser!(u32).range(i64::from(scram::MIN_ITERATIONS)..=i64::from(scram::MAX_ITERATIONS)))]
        iterations: u32,
        /// The user.
        name: String,
    },
    /// List the users: name, home, how they log in, limits.
    Users {
        #[command(flatten)]
        users: Accounts,
    },
    /// Read every stored file again and compare it with the digest recorded at its upload,
    /// the files clients reported damaged first (`reported PATH: damaged|fine|gone`, their
    /// marks then cleared): prints each damaged file (its bytes changed, its inode times did not: bit rot), counts
    /// the files without a valid record (changed through the file system, or never recorded),
    /// and exits 1 if any file is damaged.
    Scrub {
        #[command(flatten)]
        store: Store,
        /// Also list the unverifiable files, each with why.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Hash files now and record that as their digest: for files an admin changed on purpose,
    /// which a scrub then checks again. A client's report that the file is damaged is cleared.
    Rerecord {
        #[command(flatten)]
        store: Store,
        /// The digest to record (what downloads of it are then checked with).
        #[arg(long, value_enum, default_value = "md5")]
        digest: DigestArg,
        /// Files, as paths relative to the root (a leading / is allowed).
        #[arg(required = true)]
        paths: Vec<String>,
    },
}

/// Where the users are: a users file, or the database of a service (`--database`).
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Accounts {
    /// The users file (it must be readable by its owner only).
    #[arg(long, env = "FTPD_USERS")]
    users: Option<PathBuf>,
    /// The database the instances of a service share (postgres://...): a change there is in
    /// force on every instance within seconds, without a reload.
    #[arg(long, env = "FTPD_DATABASE", value_name = "URL")]
    database: Option<String>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("{e} (try 10MiB or a number of bytes)"))
}

/// Where the stored files and their records are, as the daemon is told.
#[derive(clap::Args, Debug)]
pub struct Store {
    /// The storage root.
    #[arg(long, env = "FTPD_ROOT")]
    root: PathBuf,
    /// The daemon's private state directory (default: beside the root, as for the daemon).
    #[arg(long, env = "FTPD_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

impl Store {
    fn open(&self) -> anyhow::Result<storage::Root> {
        let state = match &self.state_dir {
            Some(dir) => dir.clone(),
            None => storage::default_state_dir(&self.root)
                .with_context(|| format!("no state directory for {}", self.root.display()))?,
        };
        storage::Root::open(&self.root, &state)
            .with_context(|| format!("cannot open the storage root {}", self.root.display()))
    }
}

/// A digest kind on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum DigestArg {
    Md5,
    Blake3,
}

/// Whether `args` name an admin command (`ftpd passwd ...`, `ftpd adduser ...`).
pub fn is_admin(args: &[std::ffi::OsString]) -> bool {
    matches!(
        args.get(1).and_then(|a| a.to_str()),
        Some("passwd" | "adduser" | "users" | "scrub" | "rerecord")
    )
}

/// Runs an admin command; a scrub that found damage exits 1.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Scrub { store, verbose } => return scrub(&store.open()?, verbose),
        Command::Rerecord {
            store,
            digest,
            paths,
        } => {
            let root = store.open()?;
            let kind = match digest {
                DigestArg::Md5 => protocol::DigestKind::Md5,
                DigestArg::Blake3 => protocol::DigestKind::Blake3,
            };
            for path in &paths {
                let vpath = storage::VPath::resolve(&storage::VPath::root(), path)
                    .with_context(|| format!("bad path {path:?}"))?;
                let digest = root
                    .rerecord(&vpath, kind)
                    .with_context(|| format!("cannot rerecord {vpath}"))?;
                println!(
                    "recorded {} {}:{digest}",
                    crate::logging::Wire(&vpath.to_string()),
                    kind.key()
                );
                tracing::info!(path = %crate::logging::Wire(&vpath.to_string()), digest = %format!("{}:{digest}", kind.key()), "rerecorded");
            }
        }
        Command::Passwd {
            users: Accounts {
                database: Some(url),
                ..
            },
            iterations,
            name,
        } => {
            let verifier = Verifier::generate(&ask_password(&name)?, iterations);
            database(&url, |state| async move {
                match state
                    .set_verifier(&name, Some(&verifier.to_string()))
                    .await?
                {
                    Some(_) => {
                        eprintln!("password of {name} set (only its verifier is stored); every instance uses it within seconds");
                        Ok(())
                    }
                    None => bail!("no user {name:?} in the database (add one with ftpd adduser)"),
                }
            })?;
        }
        Command::Passwd {
            users: Accounts {
                users: Some(users), ..
            },
            iterations,
            name,
        } => {
            let mut doc = read(&users, false)?;
            let Some(entry) = find(&mut doc, &name) else {
                bail!(
                    "{}: no user {name:?} (add one with ftpd adduser)",
                    users.display()
                );
            };
            let verifier = Verifier::generate(&ask_password(&name)?, iterations);
            entry.remove("secret");
            let old_file = entry
                .remove("secret_file")
                .and_then(|f| f.as_str().map(PathBuf::from));
            entry.insert("password", value(verifier.to_string()));
            write(&users, &doc)?;
            if let Some(old) = old_file {
                eprintln!(
                    "{name}'s old secret file {} is no longer used: remove it (it holds the \
                     old password itself)",
                    old.display()
                );
            }
            eprintln!(
                "password of {name} set in {} (only its verifier is stored); reload the daemon \
                 (kill -HUP, systemctl reload ftpd) to put it in force",
                users.display()
            );
        }
        Command::Adduser {
            users,
            home,
            read_only,
            keys,
            password,
            iterations,
            max_rate,
            max_sessions,
            quota,
            name,
        } => {
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                bail!("user names are 1 to 64 printable characters");
            }
            let home = home.unwrap_or_else(|| name.clone());
            // Checked before a password is asked for: a home outside the root never loads.
            storage::VPath::resolve(&storage::VPath::root(), &home)
                .map_err(|e| anyhow::anyhow!("home {home:?}: {e}"))?;
            let users = match users {
                Accounts {
                    database: Some(url),
                    ..
                } => {
                    let verifier = (keys.is_empty() || password)
                        .then(|| ask_password(&name))
                        .transpose()?
                        .map(|p| Verifier::generate(&p, iterations).to_string());
                    let row = pgstate::UserRow {
                        name: name.clone(),
                        verifier,
                        keys: keys.iter().map(ToString::to_string).collect(),
                        home,
                        read_only,
                        limits: pgstate::Limits {
                            rate_up: max_rate,
                            rate_down: max_rate,
                            quota,
                            max_files: None,
                            max_sessions,
                        },
                    };
                    return database(&url, |state| async move {
                        if state.user(&row.name).await?.is_some() {
                            bail!(
                                "user {:?} exists in the database (ftpd passwd changes a password)",
                                row.name
                            );
                        }
                        state.put_user(&row).await?;
                        eprintln!("added {name}; every instance lets them in within seconds");
                        Ok(ExitCode::SUCCESS)
                    });
                }
                Accounts {
                    users: Some(users), ..
                } => users,
                Accounts { .. } => unreachable!("clap requires one of --users and --database"),
            };
            let mut doc = read(&users, true)?;
            if find(&mut doc, &name).is_some() {
                bail!(
                    "{}: user {name:?} exists (ftpd passwd changes a password)",
                    users.display()
                );
            }
            let mut entry = Table::new();
            entry.insert("name", value(name.clone()));
            if keys.is_empty() || password {
                let verifier = Verifier::generate(&ask_password(&name)?, iterations);
                entry.insert("password", value(verifier.to_string()));
            }
            if !keys.is_empty() {
                let mut list = Array::new();
                for key in &keys {
                    list.push(key.to_string());
                }
                entry.insert("keys", value(list));
            }
            entry.insert("home", value(home));
            entry.insert("read_only", value(read_only));
            let size = |n: u64| value(i64::try_from(n).unwrap_or(i64::MAX));
            if let Some(rate) = max_rate {
                entry.insert("max_rate", size(rate));
            }
            if let Some(n) = max_sessions {
                entry.insert("max_sessions", value(i64::from(n)));
            }
            if let Some(q) = quota {
                entry.insert("quota", size(q));
            }
            match doc.get_mut("user") {
                Some(Item::ArrayOfTables(list)) => list.push(entry),
                Some(_) => bail!(
                    "{}: `user` is not a list of [[user]] tables",
                    users.display()
                ),
                None => {
                    let mut list = ArrayOfTables::new();
                    list.push(entry);
                    doc.insert("user", Item::ArrayOfTables(list));
                }
            }
            write(&users, &doc)?;
            eprintln!(
                "added {name} to {}; reload the daemon (kill -HUP, systemctl reload ftpd) to \
                 let them in",
                users.display()
            );
        }
        Command::Passwd { .. } => unreachable!("clap requires one of --users and --database"),
        Command::Users { users } => list_users(users)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `ftpd users`: one line a user, sorted by name.
fn list_users(accounts: Accounts) -> anyhow::Result<()> {
    let rows = match accounts {
        Accounts {
            database: Some(url),
            ..
        } => database(&url, |state| async move { Ok(state.users().await?.users) })?,
        Accounts {
            users: Some(path), ..
        } => {
            let key = [0; 32]; // only for old `secret` entries' verifiers, not shown here
            let users = crate::users::Users::load(&path, None, &key)?;
            let mut rows: Vec<pgstate::UserRow> = users
                .iter()
                .map(|u| pgstate::UserRow {
                    name: u.name.clone(),
                    verifier: u.verifier.as_ref().map(|_| String::new()),
                    keys: u.keys.iter().map(ToString::to_string).collect(),
                    home: u.home.to_string(),
                    read_only: u.read_only,
                    limits: pgstate::Limits {
                        rate_up: u.limits.rate_up,
                        rate_down: u.limits.rate_down,
                        quota: u.limits.quota,
                        max_files: u.limits.max_files,
                        max_sessions: u.limits.max_sessions,
                    },
                })
                .collect();
            rows.sort_by(|a, b| a.name.cmp(&b.name));
            rows
        }
        Accounts { .. } => unreachable!("clap requires one of --users and --database"),
    };
    let mut out = std::io::stdout().lock();
    for row in rows {
        writeln!(out, "{}", user_line(&row))?;
    }
    Ok(())
}

/// A user as `ftpd users` prints it: `name home=... login=password,2 keys read-only
/// max_rate_up=... ...`, with names and homes quoted when odd.
fn user_line(row: &pgstate::UserRow) -> String {
    use crate::logging::Wire;
    let mut login = Vec::new();
    if row.verifier.is_some() {
        login.push("password".to_owned());
    }
    match row.keys.len() {
        0 => {}
        1 => login.push("1 key".to_owned()),
        n => login.push(format!("{n} keys")),
    }
    let mut line = format!(
        "{} home={} login={}",
        Wire(&row.name),
        Wire(&row.home),
        login.join("+").replace(' ', "_")
    );
    if row.read_only {
        line.push_str(" read-only");
    }
    let l = &row.limits;
    let sizes = [
        ("max_rate_up", l.rate_up),
        ("max_rate_down", l.rate_down),
        ("quota", l.quota),
        ("max_files", l.max_files),
        ("max_sessions", l.max_sessions.map(u64::from)),
    ];
    for (key, n) in sizes {
        if let Some(n) = n {
            line.push_str(&format!(" {key}={n}"));
        }
    }
    line
}

/// Runs `work` on the database at `url`, as an admin command does: one short connection, the
/// schema migrated as a daemon's start would.
fn database<T, F, Fut>(url: &str, work: F) -> anyhow::Result<T>
where
    F: FnOnce(pgstate::State) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let name = format!("admin:{}", crate::cluster::instance_name());
        let cluster = crate::cluster::Cluster::connect_as(url, name).await?;
        work(cluster.state).await
    })
}

/// `ftpd scrub`: the files clients reported damaged first (each as damaged, fine or gone, and
/// the marks it settled cleared), then every other file; damaged files on stdout, one line
/// each (and unverifiable ones with `--verbose`); the counts as one log line, at ERROR when
/// anything is damaged.
fn scrub(root: &storage::Root, verbose: bool) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let mut tally = Tally::default();
    let mut checked = std::collections::HashSet::new();
    for suspect in root.suspects() {
        let shown = suspect.path.to_string();
        let verdict = root.check_path(&suspect.path);
        let path = crate::logging::Wire(&shown);
        let word = match &verdict {
            storage::Verdict::Intact => "fine",
            storage::Verdict::Damaged { .. } => "damaged",
            storage::Verdict::Gone => "gone",
            storage::Verdict::Unverifiable(_) => "unverifiable",
        };
        writeln!(out, "reported {path}: {word}")?;
        if verdict.settles() {
            root.clear_suspect(&suspect.path);
        }
        tally.add(&mut out, &shown, &verdict, verbose)?;
        checked.insert(shown);
    }
    for found in root.scrub_except(checked) {
        tally.add(&mut out, &found.path, &found.verdict, verbose)?;
    }
    out.flush()?;
    let Tally {
        intact,
        damaged,
        unverifiable,
    } = tally;
    if damaged > 0 {
        tracing::error!(intact, damaged, unverifiable, "scrub found damaged files");
        Ok(ExitCode::from(1))
    } else {
        tracing::info!(intact, damaged, unverifiable, "scrub found no damage");
        Ok(ExitCode::SUCCESS)
    }
}

/// What a scrub found, counted.
#[derive(Default)]
struct Tally {
    intact: u64,
    damaged: u64,
    unverifiable: u64,
}

impl Tally {
    /// Counts one file, printing it if damaged (or, with `verbose`, unverifiable).
    fn add(
        &mut self,
        out: &mut impl Write,
        path: &str,
        verdict: &storage::Verdict,
        verbose: bool,
    ) -> std::io::Result<()> {
        use storage::Verdict;
        let path = crate::logging::Wire(path);
        match verdict {
            Verdict::Intact => self.intact += 1,
            Verdict::Damaged { from } => {
                self.damaged += 1;
                match from {
                    Some(at) => writeln!(out, "damaged {path} (from byte {at})")?,
                    None => writeln!(out, "damaged {path}")?,
                }
            }
            Verdict::Unverifiable(why) => {
                self.unverifiable += 1;
                if verbose {
                    writeln!(out, "unverifiable {path}: {why}")?;
                }
            }
            Verdict::Gone => {}
        }
        Ok(())
    }
}

/// The users file as a document to edit; a missing one is empty when `may_create`.
fn read(path: &Path, may_create: bool) -> anyhow::Result<DocumentMut> {
    if may_create && !path.exists() {
        return Ok(DocumentMut::new());
    }
    check_private(path, "users file")?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read users file {}", path.display()))?;
    text.parse()
        .with_context(|| format!("users file {} is not valid TOML", path.display()))
}

/// The `[[user]]` table named `name`.
fn find<'d>(doc: &'d mut DocumentMut, name: &str) -> Option<&'d mut Table> {
    doc.get_mut("user")?
        .as_array_of_tables_mut()?
        .iter_mut()
        .find(|t| t.get("name").and_then(Item::as_str) == Some(name))
}

/// Replaces the users file with `doc`: a private temporary file beside it, synced, renamed,
/// with the owner and group the file had (run as root for a daemon user's file, it stays the
/// daemon user's).
fn write(path: &Path, doc: &DocumentMut) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(path).ok().map(|m| (m.uid(), m.gid()));
    crate::private::write_atomically(path, doc.to_string().as_bytes())?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("cannot give {} back its owner", path.display()))?;
    }
    Ok(())
}

/// A new password: asked twice without echo at a terminal, else one line of stdin.
fn ask_password(name: &str) -> anyhow::Result<Vec<u8>> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("New password for {name}: "))?;
        let again = rpassword::prompt_password(format!("Again, for {name}: "))?;
        if first != again {
            bail!("the two passwords differ; nothing changed");
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if password.is_empty() {
        bail!("the password is empty; nothing changed");
    }
    let _ = std::io::stderr().flush();
    Ok(password.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edit_keeps_comments_and_other_users() {
        let mut doc: DocumentMut = "# our users\n[[user]]\nname = \"a\" # first\nsecret = \"s\"\nhome = \"a\"\n\n[[user]]\nname = \"b\"\nsecret = \"t\"\nhome = \"b\"\n"
            .parse()
            .unwrap();
        let entry = find(&mut doc, "b").unwrap();
        entry.remove("secret");
        entry.insert("password", value("SCRAM-SHA-256$4096:x$y:z"));
        let text = doc.to_string();
        assert!(
            text.contains("# our users") && text.contains("# first"),
            "{text}"
        );
        assert!(
            text.contains("secret = \"s\"") && !text.contains("secret = \"t\""),
            "{text}"
        );
        assert!(
            text.contains("password = \"SCRAM-SHA-256$4096:x$y:z\""),
            "{text}"
        );
    }
}
