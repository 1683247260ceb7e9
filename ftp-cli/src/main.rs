//! The `ftp-cli` binary: flags and exit codes; the work is in the library.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ftp_cli::app::{App, Login};
use ftp_cli::client::Credentials;
use ftp_cli::error::ClientError;
use ftp_cli::link::Dial;
use ftp_cli::output::Output;
use ftp_cli::repl::{self, Source};
use ftp_cli::trust::{self, Security, Trust};
use protocol::DigestKind;

/// Move files to and from an ftpd server, interactively or from scripts.
#[derive(Parser, Debug)]
#[command(
    name = "ftp-cli",
    version,
    after_help = "Exit status: 0 success; 2 usage error; 3 cannot connect or connection lost; \
                  4 authentication failed; 5 the server refused a command; 6 local file error; \
                  7 verification, protocol or internal failure; 8 some files of a multi-file \
                  command failed; 9 not the protocol expected (not TLS, not ftpd, or TLS and \
                  plaintext mismatched); 10 the server's key is not the one pinned for it \
                  (changed, not --fingerprint's, or shown without being held); 11 the server's \
                  copy of a file is damaged (it no longer matches the digest recorded at \
                  upload; not retried); 130 cancelled \
                  (Ctrl-C).\n\n\
                  Every connection is TLS 1.3. The server's key is pinned at first contact in \
                  known_hosts, as ssh does: a changed key is refused.\n\n\
                  The connection is made by the first command that needs the server; \
                  without HOST, `open HOST` makes it (`help` in the shell lists the commands, \
                  `ftp-cli --man` documents them).\n\n\
                  `ftp-cli keygen [FILE]` makes a key for logins without a password (-i FILE, \
                  or found by itself in the data directory)."
)]
struct Args {
    /// Server to connect to, HOST or HOST:PORT (default port 2121). Without it, the shell
    /// starts unconnected: `open HOST` connects.
    host: Option<String>,

    /// Run these commands (separated by `;`) and exit; stops at the first failure.
    #[arg(short = 'c', long = "commands", conflicts_with = "batch")]
    commands: Option<String>,

    /// Run the commands in FILE, one per line, and exit; stops at the first failure.
    #[arg(short = 'b', long = "batch")]
    batch: Option<PathBuf>,

    /// Longest wait for the server before giving up.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// Log in as this user (the server must have it in its users file).
    #[arg(short = 'u', long = "user")]
    user: Option<String>,

    /// Read the user's password from FILE (one trailing newline is ignored); else the
    /// FTP_CLI_SECRET environment variable; else it is asked for without echo (with a key,
    /// only if the server does not take the key).
    #[arg(
        long,
        visible_alias = "password-file",
        value_name = "FILE",
        requires = "user"
    )]
    secret_file: Option<PathBuf>,

    /// Log in with this key (made by `ftp-cli keygen`), presented as a TLS client certificate;
    /// default: id_ed25519 in the client's data directory, if it exists.
    #[arg(short = 'i', long = "identity", value_name = "FILE", requires = "user")]
    identity: Option<PathBuf>,

    /// How often a transfer whose connection fails, stalls or delivers a damaged chunk is
    /// resumed (after reconnecting) before the command fails.
    #[arg(long, default_value_t = 3)]
    retries: u32,

    /// How long to keep trying to reach a server lost in the middle of a command (it may be
    /// restarting), waiting longer between tries, before the command fails; apart from
    /// --retries. 0 gives up at the first failed reconnect.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    retry_for: Duration,

    /// Files moved at once by put -r, get -r, mput and mget, each on a connection of its own
    /// (1: one after another).
    #[arg(short = 'P', long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32))]
    parallel: u16,

    /// The digest every chunk and file is checked with: md5 (the default, what md5sum prints)
    /// or blake3 (several times faster to compute, for links faster than ~500 MB/s).
    #[arg(long, default_value = "md5", value_name = "md5|blake3")]
    digest: DigestKind,

    /// The file of pinned server keys (default: known_hosts in the client's data directory,
    /// beside the history).
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<PathBuf>,

    /// Pin the key of a server seen for the first time without asking (ssh's
    /// StrictHostKeyChecking=accept-new); a changed key is still refused.
    #[arg(long, conflicts_with_all = ["fingerprint", "ca_file", "ca_system"])]
    accept_new_host: bool,

    /// Trust exactly the server key with this fingerprint (SHA256:..., as `ftpd --fingerprint`
    /// prints it), and no other; known_hosts is not consulted.
    #[arg(long, value_name = "SHA256:...", conflicts_with_all = ["ca_file", "ca_system"])]
    fingerprint: Option<protocol::tls::Fingerprint>,

    /// Verify the server's certificate and host name against the CA certificates in FILE
    /// (PEM), instead of pinning its key.
    #[arg(long, value_name = "FILE", conflicts_with = "ca_system")]
    ca_file: Option<PathBuf>,

    /// Verify the server's certificate and host name against the system's trust roots,
    /// instead of pinning its key.
    #[arg(long)]
    ca_system: bool,

    /// Speak plain TCP instead of TLS, to an ftpd started with --insecure-plaintext: anyone on
    /// the path reads and can change everything. For tests and debugging on loopback.
    #[arg(long, conflicts_with_all = ["fingerprint", "ca_file", "ca_system", "accept_new_host"])]
    insecure_plaintext: bool,

    /// Print listings, stat and transfer summaries as JSON lines, for scripts.
    #[arg(long)]
    json: bool,

    /// A line for every file a many-file command moves (put -r, mget, mirror, ...), not only
    /// its total line, however many files there are (as -v on the command).
    #[arg(short = 'v', long)]
    verbose: bool,

    /// Print the man page (roff) and exit: `ftp-cli --man > ftp-cli.1`.
    #[arg(long, hide = true)]
    man: bool,

    /// Print a shell completion script and exit: `ftp-cli --completions bash`.
    #[arg(long, hide = true, value_name = "SHELL")]
    completions: Option<clap_complete::Shell>,

    /// No progress bars.
    #[arg(short, long)]
    quiet: bool,
}

/// Make a key pair for logins without a password: `ftp-cli keygen [FILE]`.
#[derive(Parser, Debug)]
#[command(name = "ftp-cli keygen")]
struct Keygen {
    /// Where the private key goes (mode 0600); default: id_ed25519 in the client's data
    /// directory, which ftp-cli then uses by itself.
    file: Option<PathBuf>,
}

/// Makes the key and prints what to hand the server's admin.
fn keygen(args: Keygen) -> ExitCode {
    let Some(path) = args.file.or_else(ftp_cli::keys::default_path) else {
        eprintln!("ftp-cli: no data directory for the key: name a FILE");
        return ExitCode::from(2);
    };
    match ftp_cli::keys::generate(&path) {
        Ok(key) => {
            println!(
                "Your key is in {} (Ed25519; keep it private).",
                path.display()
            );
            println!("Its fingerprint is {}.", key.fingerprint);
            println!(
                "For the server's users file (ftpd adduser --key, or in your [[user]] entry):"
            );
            println!("keys = [\"{}\"]", key.fingerprint);
            ExitCode::SUCCESS
        }
        Err(e) => {
            ftp_cli::output::diagnostic(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

fn main() -> ExitCode {
    // One crypto provider for every TLS user in the process, chosen here rather than by
    // whichever dependency asks first.
    protocol::tls::install_provider();
    if std::env::args_os().nth(1).is_some_and(|a| a == "keygen") {
        return keygen(Keygen::parse_from(std::env::args_os().skip(1)));
    }
    let args = Args::parse();
    if args.man || args.completions.is_some() {
        return print_docs(args.man, args.completions);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`ftp-cli HOST -c ls | head`): stop quietly, as other Unix tools do.
        Err(ClientError::Stdout(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        // The warning about a server's key is several lines, loud as ssh's.
        Err(e @ ClientError::KeyChanged(_)) => {
            ftp_cli::output::diagnostic_lines(&e.to_string());
            ExitCode::from(e.exit_code())
        }
        Err(e) => {
            // Escaped: the error may carry the server's words.
            ftp_cli::output::diagnostic(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

/// `--man` and `--completions SHELL`: generated from the flag definitions themselves.
fn print_docs(man: bool, shell: Option<clap_complete::Shell>) -> ExitCode {
    use clap::CommandFactory;
    use std::io::Write;
    let mut out = Vec::new();
    if man {
        if let Err(e) = render_man(&mut out) {
            eprintln!("ftp-cli: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(shell) = shell {
        clap_complete::generate(shell, &mut Args::command(), "ftp-cli", &mut out);
    }
    match std::io::stdout().write_all(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ftp-cli: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The man page: clap's sections for the flags, and one for the shell's commands, which are
/// what a user spends their time in.
fn render_man(out: &mut Vec<u8>) -> std::io::Result<()> {
    use clap::CommandFactory;
    let man = clap_mangen::Man::new(Args::command());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    out.extend_from_slice(shell_commands_roff().as_bytes());
    man.render_extra_section(out)?;
    man.render_version_section(out)?;
    Ok(())
}

/// The `COMMANDS` section of the man page, from the same table as `help`.
fn shell_commands_roff() -> String {
    let mut roff = String::from(
        ".SH COMMANDS\nThe shell (and \\fB\\-c\\fR, \\fB\\-b\\fR and piped input) takes these \
         commands; several on a line are separated by \\fB;\\fR. Local paths may start with \
         \\fB~\\fR. Tab completes commands and paths; Ctrl\\-R searches the history.\n",
    );
    for c in ftp_cli::command::COMMANDS {
        roff.push_str(&format!(
            ".TP\n\\fB{}\\fR\n{}\n",
            roff_escape(c.usage),
            roff_escape(c.summary)
        ));
        if !c.aliases.is_empty() {
            roff.push_str(&format!(
                ".br\nAlso: {}.\n",
                roff_escape(&c.aliases.join(", "))
            ));
        }
        for d in c.details {
            roff.push_str(&format!(".br\n{}\n", roff_escape(d)));
        }
    }
    roff
}

/// Text safe in a roff line: backslashes and dashes escaped, no line starting with a control
/// character.
fn roff_escape(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

fn run(args: Args) -> Result<(), ClientError> {
    let interactive =
        args.commands.is_none() && args.batch.is_none() && std::io::stdin().is_terminal();
    // Without a server, commands that need one say so until `open HOST` names one.
    let host = args.host.clone().unwrap_or_default();
    let key = match (&args.identity, ftp_cli::keys::default_path()) {
        (Some(file), _) => Some(ftp_cli::keys::load(file)?),
        (None, Some(default)) if args.user.is_some() && default.exists() => {
            Some(ftp_cli::keys::load(&default)?)
        }
        _ => None,
    };
    let secret = given_secret(args.secret_file.as_deref())?;
    let creds = match &args.user {
        Some(user) => {
            // With a key, the password is asked for only if the server wants it.
            let password = match &secret {
                Some(p) => Some(p.clone()),
                None if key.is_none() && !host.is_empty() => Some(prompt_secret(user, &host)?),
                None => None,
            };
            Some(Credentials::new(user.clone(), password, key.clone()))
        }
        None => None,
    };
    // Bars in `-c` and `-b` mode too, as scp draws them, when stderr is a terminal (which
    // `Output` checks): a person is watching even if the commands come from a script.
    let output = Output::new(!args.quiet, args.json).verbose(args.verbose);
    let shown_host = std::sync::Arc::new(std::sync::Mutex::new(host.clone()));
    let security = security(&args)?;
    let dial = Dial {
        addr: host.clone(),
        timeout: args.timeout,
        creds,
        digest: args.digest,
        security,
        confirm: interactive.then(|| std::sync::Arc::new(ask_to_trust) as _),
        ask_password: interactive.then(|| {
            let host = shown_host.clone();
            std::sync::Arc::new(move |user: &str| {
                let host = host.lock().unwrap_or_else(|e| e.into_inner()).clone();
                prompt_secret(user, &host).ok()
            }) as _
        }),
    };
    let mut app = App::new(dial, args.retries, usize::from(args.parallel), output)?;
    app.set_retry_for(args.retry_for);
    // `user NAME` logs in with the same key and password source as -u.
    app.set_login(Login {
        key,
        secret,
        host: shown_host,
    });
    let result = if let Some(cmds) = args.commands {
        repl::run_script(&mut app, std::iter::once(Ok(cmds)), Source::Commands)
    } else if let Some(batch) = args.batch {
        repl::run_batch(&mut app, &batch)
    } else if interactive {
        return repl::interactive(app);
    } else {
        repl::run_script(&mut app, std::io::stdin().lock().lines(), Source::Stdin)
    };
    app.close();
    // The human line is `main`'s to print, on stderr; a script reading JSON gets it too.
    if let Err(e) = &result {
        app.output().json_error(&e.to_string(), e);
    }
    result
}

/// TLS and whom to trust, from the flags.
fn security(args: &Args) -> Result<Security, ClientError> {
    if args.insecure_plaintext {
        return Ok(Security::Plaintext);
    }
    let trust = if let Some(fp) = args.fingerprint {
        Trust::Key(fp)
    } else if let Some(file) = &args.ca_file {
        Trust::Ca(std::sync::Arc::new(trust::ca_file(file)?))
    } else if args.ca_system {
        Trust::Ca(std::sync::Arc::new(trust::ca_system()?))
    } else {
        let file = match &args.known_hosts {
            Some(file) => file.clone(),
            None => trust::default_known_hosts().ok_or_else(|| {
                ClientError::Usage(
                    "no data directory for known_hosts: give --known-hosts FILE".into(),
                )
            })?,
        };
        Trust::KnownHosts {
            file,
            accept_new: args.accept_new_host,
        }
    };
    Ok(Security::Tls(trust))
}

/// First contact at a terminal: show the server's key and ask, as ssh does.
fn ask_to_trust(host: &str, fingerprint: &protocol::tls::Fingerprint) -> bool {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "The authenticity of server '{host}' can't be established.\n\
         Its key fingerprint is {fingerprint}.\n\
         Are you sure you want to continue connecting (yes/no)? "
    );
    loop {
        let _ = err.flush();
        let mut answer = String::new();
        match std::io::stdin().lock().read_line(&mut answer) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        let answer = answer.trim();
        if answer.eq_ignore_ascii_case("yes") || answer == fingerprint.to_string() {
            return true;
        }
        if answer.eq_ignore_ascii_case("no") {
            return false;
        }
        let _ = write!(err, "Please type 'yes' or 'no': ");
    }
}

/// The password given up front: from a file, or the environment.
fn given_secret(file: Option<&std::path::Path>) -> Result<Option<Vec<u8>>, ClientError> {
    let secret = if let Some(file) = file {
        let mut text = std::fs::read(file).map_err(|e| ClientError::local(file, e))?;
        if text.ends_with(b"\n") {
            text.pop();
            if text.ends_with(b"\r") {
                text.pop();
            }
        }
        text
    } else if let Some(env) = std::env::var_os("FTP_CLI_SECRET") {
        env.into_encoded_bytes()
    } else {
        return Ok(None);
    };
    if secret.is_empty() {
        return Err(ClientError::Usage("the password is empty".into()));
    }
    Ok(Some(secret))
}

/// The password for `user`, asked for without echo. What was typed at the terminal before
/// the prompt showed (a command typed ahead while connecting) is dropped first, never taken
/// as the password, as OpenSSH's readpassphrase does; the user is told.
fn prompt_secret(user: &str, host: &str) -> Result<Vec<u8>, ClientError> {
    discard_typed_ahead();
    let secret = rpassword::prompt_password(format!("Password for {user}@{host}: "))
        .map_err(|e| {
            ClientError::Usage(format!(
                "no password for {user}: give --secret-file FILE or set FTP_CLI_SECRET ({e})"
            ))
        })?
        .into_bytes();
    if secret.is_empty() {
        return Err(ClientError::Usage(format!(
            "the password for {user} is empty"
        )));
    }
    Ok(secret)
}

/// Drops input pending at the terminal, saying so when there was some.
fn discard_typed_ahead() {
    let Ok(tty) = std::fs::File::open("/dev/tty") else {
        return;
    };
    let pending = rustix::io::ioctl_fionread(&tty).unwrap_or(0);
    if pending > 0 && rustix::termios::tcflush(&tty, rustix::termios::QueueSelector::IFlush).is_ok()
    {
        ftp_cli::output::diagnostic(
            "what was typed before the password prompt is discarded, not taken as the password",
        );
    }
}
