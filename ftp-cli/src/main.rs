//! The `ftp-cli` binary: flags and exit codes; the work is in the library.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ftp_cli::app::App;
use ftp_cli::client::Credentials;
use ftp_cli::error::ClientError;
use ftp_cli::link::Dial;
use ftp_cli::output::Output;
use ftp_cli::repl;
use protocol::DigestKind;

/// Move files to and from an ftpd server, interactively or from scripts.
#[derive(Parser, Debug)]
#[command(
    name = "ftp-cli",
    version,
    after_help = "Exit status: 0 success; 2 usage error; 3 cannot connect or connection lost; \
                  4 authentication failed; 5 the server refused a command; 6 local file error; \
                  7 verification, protocol or internal failure; 8 some files of a multi-file \
                  command failed; 130 cancelled (Ctrl-C).\n\n\
                  The connection is made by the first command that needs the server."
)]
struct Args {
    /// Server to connect to, HOST or HOST:PORT (default port 2121).
    host: String,

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

    /// Read the user's secret from FILE (one trailing newline is ignored); else the
    /// FTP_CLI_SECRET environment variable; else it is asked for without echo.
    #[arg(long, value_name = "FILE", requires = "user")]
    secret_file: Option<PathBuf>,

    /// How often a transfer whose connection fails, stalls or delivers a damaged chunk is
    /// resumed (after reconnecting) before the command fails.
    #[arg(long, default_value_t = 3)]
    retries: u32,

    /// Files moved at once by put -r, get -r, mput and mget, each on a connection of its own
    /// (1: one after another).
    #[arg(short = 'P', long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32))]
    parallel: u16,

    /// The digest every chunk and file is checked with: md5 (the default, what md5sum prints)
    /// or blake3 (several times faster to compute, for links faster than ~500 MB/s).
    #[arg(long, default_value = "md5", value_name = "md5|blake3")]
    digest: DigestKind,

    /// Print listings, stat and transfer summaries as JSON lines, for scripts.
    #[arg(long)]
    json: bool,

    /// Print the man page (roff) and exit: `ftp-cli --man x > ftp-cli.1`.
    #[arg(long, hide = true)]
    man: bool,

    /// Print a shell completion script and exit: `ftp-cli --completions bash x`.
    #[arg(long, hide = true, value_name = "SHELL")]
    completions: Option<clap_complete::Shell>,

    /// No progress bars.
    #[arg(short, long)]
    quiet: bool,
}

fn main() -> ExitCode {
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
        if let Err(e) = clap_mangen::Man::new(Args::command()).render(&mut out) {
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

fn run(args: Args) -> Result<(), ClientError> {
    let interactive =
        args.commands.is_none() && args.batch.is_none() && std::io::stdin().is_terminal();
    let creds = match &args.user {
        Some(user) => Some(Credentials {
            user: user.clone(),
            secret: secret(user, &args.host, args.secret_file.as_deref())?,
        }),
        None => None,
    };
    let output = Output::new(interactive && !args.quiet, args.json);
    let dial = Dial {
        addr: args.host.clone(),
        timeout: args.timeout,
        creds,
        digest: args.digest,
    };
    let mut app = App::new(dial, args.retries, usize::from(args.parallel), output)?;
    let result = if let Some(cmds) = args.commands {
        repl::run_script(&mut app, std::iter::once(Ok(cmds)))
    } else if let Some(batch) = args.batch {
        repl::run_batch(&mut app, &batch)
    } else if interactive {
        return repl::interactive(app);
    } else {
        repl::run_script(&mut app, std::io::stdin().lock().lines())
    };
    app.close();
    result
}

/// The secret for `user`: from a file, the environment, or a prompt that does not echo.
fn secret(user: &str, host: &str, file: Option<&std::path::Path>) -> Result<Vec<u8>, ClientError> {
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
        rpassword::prompt_password(format!("Secret for {user}@{host}: "))
            .map_err(|e| {
                ClientError::Usage(format!(
                    "no secret for {user}: give --secret-file FILE or set FTP_CLI_SECRET ({e})"
                ))
            })?
            .into_bytes()
    };
    if secret.is_empty() {
        return Err(ClientError::Usage(format!(
            "the secret for {user} is empty"
        )));
    }
    Ok(secret)
}
