//! The daemon's settings: every one a flag, an `FTPD_*` environment variable, or a key of the
//! `--config` file, in that order of precedence, each with a documented default.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use serde::Serialize;

/// Serve one directory to ftp-cli clients over the ftpd protocol (docs/PROTOCOL.md).
///
/// Users: `ftpd adduser --users FILE NAME` adds one, `ftpd passwd --users FILE NAME` sets a
/// password (only its SCRAM verifier is stored); see `ftpd adduser --help`.
///
/// Every setting can also be given in a TOML file (--config) under the flag's name, e.g.
/// `root = "/srv/ftp"` or `max-connections = 100`; a flag beats its FTPD_* environment
/// variable, which beats the file, which beats the default.
#[derive(Parser, Debug, Clone, Serialize)]
#[command(name = "ftpd", version, args_override_self = true)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    /// Directory to serve (required, here or in the settings file). The daemon's private state
    /// lives outside it, in --state-dir.
    #[arg(long, env = "FTPD_ROOT")]
    pub root: Option<PathBuf>,

    /// Keep the files on an S3-compatible object store instead of a directory (instead of
    /// --root): s3://BUCKET[/PREFIX]. Credentials and region come from AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, or the shared credentials file
    /// (AWS_PROFILE); --state-dir is required (it holds the TLS key). At start the bucket is
    /// probed: reachable, writable, and whether it honours If-None-Match. What differs from a
    /// directory: a rename is a copy then a delete (not atomic; files over 5 GiB and
    /// directories of over 1,000 objects or 10 GiB are refused), an empty directory is a
    /// marker object, uploads resume from the last 8 MiB part boundary, there is no scrub,
    /// and where the service ignores If-None-Match two racing uploads to one new name can
    /// both succeed (--check-config says which).
    #[arg(
        long,
        env = "FTPD_STORAGE",
        value_name = "URL",
        conflicts_with = "root"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,

    /// The S3-compatible service's address (MinIO, Garage, Ceph, R2...), e.g.
    /// http://127.0.0.1:3900; without it, AWS's regional endpoint. Path-style requests.
    #[arg(
        long,
        env = "FTPD_S3_ENDPOINT",
        value_name = "URL",
        requires = "storage"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,

    /// Part size of uploads to S3 (at least 5MiB): a resumed upload continues from the last
    /// whole part.
    #[arg(long, env = "FTPD_S3_PART_SIZE", default_value = "8MiB", value_parser = parse_bytes)]
    pub s3_part_size: u64,

    /// Memory all uploads to S3 share for their part buffers (one part each); uploads beyond
    /// it wait for room.
    #[arg(long, env = "FTPD_S3_PART_MEMORY", default_value = "256MiB", value_parser = parse_bytes)]
    pub s3_part_memory: u64,

    /// Directory for the daemon's private state (staged uploads, recorded digests), created
    /// mode 0700 if missing. It must be on the root's filesystem (uploads are committed by
    /// renaming them into the root), and neither inside the root nor holding it. Default:
    /// beside the root, named after it (`--root /srv/files` keeps its state in
    /// `/srv/.files.ftpd-state`). An older version's `ROOT/.ftpd` is moved into it at startup.
    #[arg(long, env = "FTPD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Address to listen on; port 0 picks a free port (the bound address is logged). Ignored
    /// when systemd passes a listening socket (socket activation).
    /// A host name (`localhost:2121`) is resolved, and its first address used.
    #[arg(long, env = "FTPD_LISTEN", default_value = "127.0.0.1:2121", value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// Serve metrics and health over HTTP on this address (off by default): GET /metrics
    /// (Prometheus text format), /healthz, /readyz and /users. A bare port means
    /// 127.0.0.1:PORT; an address others can reach is allowed, with a warning at start (the
    /// figures tell them how the server is used). Port 0 picks a free port; the bound address
    /// is logged (`metrics listening on ...`).
    #[arg(long, env = "FTPD_METRICS_LISTEN", value_name = "ADDR", value_parser = parse_metrics_listen)]
    pub metrics_listen: Option<SocketAddr>,

    /// Settings file (TOML): any flag's long name as a key.
    #[arg(long, env = "FTPD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Check the settings (and the root and users file), print the effective configuration,
    /// and exit.
    #[arg(long)]
    #[serde(skip)]
    pub check_config: bool,

    /// Users file (TOML, one [[user]] table each: name, password (a SCRAM verifier, set by
    /// `ftpd passwd`), keys (public key fingerprints), home, read_only). Without it, anyone who
    /// can connect has full access to the root.
    #[arg(long, env = "FTPD_USERS")]
    pub users: Option<PathBuf>,

    /// Share users, the login throttle, session and rate caps, quota usage and the registry of
    /// resumable uploads with the other instances of one service, in PostgreSQL:
    /// postgres://USER[:PASSWORD]@HOST[:PORT]/DB (or key=value form). Users then come from the
    /// database (`ftpd adduser --database`), not from --users; changes reach every instance
    /// within seconds. The files must be shared too: --storage, or a --root every instance
    /// mounts, said with --shared-root. See docs/CLUSTER.md.
    #[arg(
        long,
        env = "FTPD_DATABASE",
        value_name = "URL",
        conflicts_with = "users"
    )]
    #[serde(
        serialize_with = "redacted_url",
        skip_serializing_if = "Option::is_none"
    )]
    pub database: Option<String>,

    /// With --database and --root: the root is one filesystem every instance mounts (NFS,
    /// CephFS...), so that a file one instance stored is there for all.
    #[arg(long, env = "FTPD_SHARED_ROOT", requires = "database")]
    pub shared_root: bool,

    /// Print the SHA-256 fingerprint of the server's TLS key (what clients pin, in the form
    /// `SHA256:<base64>`) and exit; makes the key first if this is the first start.
    #[arg(long)]
    #[serde(skip)]
    pub fingerprint: bool,

    /// TLS certificate chain (PEM) to present instead of the self-signed one made at first
    /// start, e.g. one a CA issued (certbot's fullchain.pem). Needs --tls-key. Re-read on
    /// SIGHUP, so a renewed certificate takes effect without dropping connections.
    #[arg(long, env = "FTPD_TLS_CERT", requires = "tls_key", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert. Re-read on SIGHUP.
    #[arg(long, env = "FTPD_TLS_KEY", requires = "tls_cert", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Speak plain TCP instead of TLS: anyone on the path reads and can change everything,
    /// the files, names and user names. Only on a loopback address, for tests and debugging;
    /// clients must be told too (ftp-cli --insecure-plaintext).
    #[arg(long, env = "FTPD_INSECURE_PLAINTEXT", conflicts_with_all = ["tls_cert", "tls_key"])]
    pub insecure_plaintext: bool,

    /// Serve anonymously (no --users) on an address that is not loopback.
    #[arg(long, env = "FTPD_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,

    /// Load balancers in front of the daemon (HAProxy with `send-proxy-v2`): CIDRs or bare
    /// addresses, comma-separated or repeated (e.g. 10.0.0.0/8,fd00::1). A connection from
    /// one of them must begin with a PROXY protocol v2 header, read before TLS within 5 s,
    /// and the client address in it is the one every per-address limit, the login throttle
    /// and the logs see; a LOCAL header (a health check) is served as the proxy's own. A
    /// PROXY header from any other address is refused. None by default.
    #[arg(long, env = "FTPD_PROXY_PROTOCOL_FROM", value_name = "CIDR", value_delimiter = ',',
          value_parser = crate::proxy::parse_source)]
    #[serde(serialize_with = "nets", skip_serializing_if = "Vec::is_empty")]
    pub proxy_protocol_from: Vec<ipnet::IpNet>,

    /// Most connections served at once; more are refused with a `busy` error.
    #[arg(long, env = "FTPD_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,

    /// Most connections from one IP address at once; more are refused with a `busy` error.
    #[arg(long, env = "FTPD_MAX_CONNECTIONS_PER_IP", default_value_t = 64)]
    pub max_connections_per_ip: usize,

    /// Most connections at once that have not logged in yet (serving anonymously: not said
    /// hello yet); more are refused with a `busy` error. Connections that have logged in do not
    /// count, so keep it well below --max-connections: strangers then cannot take users' slots.
    #[arg(long, env = "FTPD_MAX_UNAUTHENTICATED", default_value_t = 64)]
    pub max_unauthenticated: usize,

    /// Most connections at once that have not logged in yet from one address range (an IPv4
    /// /24, an IPv6 /64); more are refused with a `busy` error.
    #[arg(long, env = "FTPD_MAX_UNAUTHENTICATED_PER_RANGE", default_value_t = 16)]
    pub max_unauthenticated_per_range: usize,

    /// After a failed login, how long its address range (an IPv4 /24, an IPv6 /64) and its
    /// user name are shut out: their attempts are refused at once, unchecked, with when to try
    /// again (`busy` for the range, `auth_failed` for the user name; not the name for a range
    /// that logged in as it in the last 7 days). Doubled for each further failure, up to
    /// --login-penalty-max; failures are forgotten after 15 minutes. 0s turns it off.
    #[arg(long, env = "FTPD_LOGIN_PENALTY", default_value = "250ms", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "duration")]
    pub login_penalty: Duration,

    /// The longest --login-penalty, however many failures (at most 15 minutes).
    #[arg(long, env = "FTPD_LOGIN_PENALTY_MAX", default_value = "8s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "duration")]
    pub login_penalty_max: Duration,

    /// Largest file an upload may create (e.g. 10G, 500MiB); none by default.
    #[arg(long, env = "FTPD_MAX_FILE_SIZE", value_parser = parse_bytes)]
    pub max_file_size: Option<u64>,

    /// Most bytes all files in the root may take together (e.g. 100G); none by default.
    /// Uploads that would go over it are refused before any byte is sent.
    #[arg(long, env = "FTPD_QUOTA", value_parser = parse_bytes)]
    pub quota: Option<u64>,

    /// Bandwidth cap of the whole daemon, in bytes per second for each direction (e.g.
    /// 100MiB): all uploads together move at most this, and all downloads together too.
    /// Per-user caps (`max_rate` in the users file) apply on top of it; none by default.
    #[arg(long, env = "FTPD_MAX_RATE", value_parser = parse_rate)]
    pub max_rate: Option<u64>,

    /// Most files and directories the root may hold (e.g. 100000); none by default. Uploads
    /// of new files and new directories that would go over it are refused up front.
    #[arg(long, env = "FTPD_MAX_FILES")]
    pub max_files: Option<u64>,

    /// Most interrupted uploads one home keeps staged for `put -c`; default 16. One more
    /// removes the home's oldest. (Uploads in progress are bounded by the connections.)
    #[arg(long, env = "FTPD_MAX_STAGED_UPLOADS", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_staged_uploads: u64,

    /// Report uploads `stored` without syncing them to disk first (as rsync and sftp servers
    /// do by default). Faster for trees of small files; but a crash of the machine (not of
    /// ftpd) may then lose files already reported stored, or leave them empty. By default
    /// every `stored` means the file is on disk: one at a time, or for a pipeline of small
    /// files, a group with one pair of `syncfs` calls.
    #[arg(long, env = "FTPD_NO_FSYNC")]
    pub no_fsync: bool,

    /// Most bytes of chunk bodies held in memory by all transfers together (e.g. 256MiB):
    /// read ahead from disk for downloads, received and not yet written for uploads. A
    /// transfer waits for its share (within --stall-timeout) instead of allocating more. The
    /// default, 24MiB, keeps six transfers at full speed (one moves at most 4 chunks of 1 MiB
    /// ahead) and the daemon under 128 MiB with 1,000 clients at once.
    #[arg(long, env = "FTPD_MEMORY_BUDGET", default_value = "24MiB", value_parser = parse_bytes)]
    pub memory_budget: u64,

    /// Most whole-file hashing jobs at once (`stat --md5`, the prefix of a resumed `get`);
    /// others wait their turn, within --stall-timeout, then get `busy`.
    #[arg(long, env = "FTPD_MAX_HASHING", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_hashing: u32,

    /// Time a new client has to complete the hello exchange and authentication, both together.
    #[arg(long, env = "FTPD_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "duration")]
    pub handshake_timeout: Duration,

    /// Time a client may stay silent between commands.
    #[arg(long, env = "FTPD_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "duration")]
    pub idle_timeout: Duration,

    /// Time a transfer may wait for the next frame, or for the peer to take one, before it fails.
    #[arg(long, env = "FTPD_STALL_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "duration")]
    pub stall_timeout: Duration,

    /// Slowest a transfer may move, in bytes per second, averaged over each --stall-timeout
    /// (e.g. 1KiB, the default; 0 turns it off). A transfer slower than that for a whole
    /// window is cut with `timeout`, and what it held (a connection, memory, the quota it
    /// reserved) goes to others; an upload's verified bytes stay staged for `put -c`. Keep it
    /// below any per-user rate cap.
    #[arg(long, env = "FTPD_MIN_RATE", default_value = "1KiB", value_parser = parse_bytes)]
    pub min_rate: u64,

    /// After SIGTERM or SIGINT, time given to transfers in flight before they are cut (their
    /// staged bytes stay resumable).
    #[arg(long, env = "FTPD_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "duration")]
    pub shutdown_grace: Duration,

    /// Staged bytes of an interrupted upload are kept this long for `put -c` to resume, then
    /// removed (checked at startup and every quarter of this, at most every hour); default
    /// 1h. Until then they count against the quota.
    #[arg(long, env = "FTPD_STAGING_MAX_AGE", default_value = "1h", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "duration")]
    pub staging_max_age: Duration,

    /// Scrub the root in the background every DUR (e.g. 7d; off by default): every stored
    /// file read again and compared with the digest recorded at its upload, the files clients
    /// reported damaged first, as `ftpd scrub` does. One file at a time, in one of the
    /// --max-hashing slots; each damaged file is logged at ERROR, then a summary line.
    #[arg(long, env = "FTPD_SCRUB_EVERY", value_parser = parse_every)]
    #[serde(
        serialize_with = "maybe_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub scrub_every: Option<Duration>,

    /// Chunk size for downloads, in bytes (capped by what the client accepts).
    #[arg(long, env = "FTPD_CHUNK_SIZE", default_value_t = protocol::DEFAULT_CHUNK,
          value_parser = clap::value_parser!(u32).range(protocol::MIN_CHUNK as i64..=protocol::MAX_BODY as i64))]
    pub chunk_size: u32,

    /// Log filter: a level (error, warn, info, debug, trace) or RUST_LOG-style directives.
    /// Without it, RUST_LOG is used, else info. Reloaded on SIGHUP.
    #[arg(long, env = "FTPD_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// Log line format: human-readable text, or one JSON object per line for collectors.
    #[arg(long, env = "FTPD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Print the man page (roff) and exit: `ftpd --man > ftpd.1`.
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub man: bool,

    /// Print a shell completion script and exit: `ftpd --completions bash`.
    #[arg(long, hide = true, value_name = "SHELL")]
    #[serde(skip)]
    pub completions: Option<clap_complete::Shell>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Human,
    Json,
}

/// Flags that make no sense in a settings file.
const NOT_IN_FILE: &[&str] = &[
    "config",
    "check-config",
    "fingerprint",
    "man",
    "completions",
    "help",
    "version",
];

impl Config {
    /// The storage root (present in every loaded configuration without --storage).
    pub fn root(&self) -> &std::path::Path {
        self.root
            .as_deref()
            .expect("Config::load requires a root without --storage")
    }

    /// Where the files are, for logs: the root directory or the --storage URL.
    pub fn location(&self) -> String {
        match (&self.storage, &self.root) {
            (Some(url), _) => url.clone(),
            (None, Some(root)) => root.display().to_string(),
            (None, None) => String::new(),
        }
    }

    /// Settings that only make sense together.
    fn checked(self) -> anyhow::Result<Config> {
        if self.man || self.completions.is_some() {
            return Ok(self);
        }
        if self.root.is_none() && self.storage.is_none() {
            bail!(
                "no storage root: give --root DIR or --storage s3://BUCKET (or root = \"DIR\" in \
                 the --config file)"
            );
        }
        if self.database.is_some() && self.storage.is_none() && !self.shared_root {
            bail!(
                "--database shares the service's state, but --root is this machine's own \
                 directory: use --storage s3://BUCKET, or say --shared-root if every instance \
                 mounts the same root"
            );
        }
        if self.storage.is_some() {
            if self.state_dir.is_none() {
                bail!(
                    "--storage needs --state-dir DIR: a directory on this machine for the TLS key"
                );
            }
            if self.scrub_every.is_some() {
                bail!("--scrub-every reads files on the local root only, not with --storage");
            }
        }
        Ok(self)
    }

    /// Parses the command line, the environment and, when named, the settings file. Errors
    /// from clap itself (including --help and --version) come back as `clap::Error`.
    pub fn load(args: &[OsString]) -> anyhow::Result<Config> {
        let cmd = Config::command();
        let matches = cmd.clone().try_get_matches_from(args)?;
        let first = Config::from_arg_matches(&matches)?;
        let Some(path) = first.config.clone() else {
            return first.checked();
        };
        let shown = path.display();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read settings file {shown}"))?;
        // toml's own message spans lines (a snippet, a caret): one line for logs, with the line.
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map_or(0, |at| {
                text[..at.start.min(text.len())].matches('\n').count() + 1
            });
            anyhow::anyhow!(
                "settings file {shown}, line {line}: not valid TOML: {}",
                e.message().trim()
            )
        })?;
        let mut from_file: Vec<OsString> = Vec::new();
        for (key, value) in table {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(key.as_str()))
                .filter(|_| !NOT_IN_FILE.contains(&key.as_str()));
            let Some(arg) = arg else {
                bail!(
                    "settings file {shown}, line {}: unknown setting `{key}` (run ftpd --help)",
                    line_of(&text, &key)
                );
            };
            if matches!(
                matches.value_source(arg.get_id().as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            ) {
                continue; // a flag or the environment said otherwise
            }
            let flag = OsString::from(format!("--{key}"));
            let given = match value {
                toml::Value::String(s) => vec![flag, s.into()],
                toml::Value::Integer(i) => vec![flag, i.to_string().into()],
                toml::Value::Boolean(true) if !arg.get_action().takes_values() => vec![flag],
                toml::Value::Boolean(false) if !arg.get_action().takes_values() => vec![],
                other => bail!(
                    "settings file {shown}, line {}: `{key}` cannot be {}",
                    line_of(&text, &key),
                    other.type_str()
                ),
            };
            // Each value checked on its own, so that a bad one is blamed on its line of the
            // file, not on a flag nobody typed.
            let mut alone = vec![OsString::from("ftpd")];
            alone.extend(given.iter().cloned());
            // Only the value's own faults: alone, a setting may lack its companion (a
            // certificate without its key), which the whole command line still checks.
            if let Err(e) =
                Config::command()
                    .try_get_matches_from(alone)
                    .or_else(|e| match e.kind() {
                        clap::error::ErrorKind::InvalidValue
                        | clap::error::ErrorKind::ValueValidation => Err(e),
                        _ => Ok(Default::default()),
                    })
            {
                let why = std::error::Error::source(&e)
                    .map_or_else(|| e.kind().to_string(), ToString::to_string);
                bail!(
                    "settings file {shown}, line {}: bad value for `{key}`: {why}",
                    line_of(&text, &key)
                );
            }
            from_file.extend(given);
        }
        let mut all = vec![args.first().cloned().unwrap_or_else(|| "ftpd".into())];
        all.extend(from_file);
        all.extend(args.iter().skip(1).cloned());
        let matches = cmd
            .try_get_matches_from(all)
            .with_context(|| format!("in settings file {shown}"))?;
        Config::from_arg_matches(&matches)?.checked()
    }

    /// The effective settings as a settings file would spell them.
    pub fn effective(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print settings: {e}\n"))
    }
}

/// The line where `key` is set, for error messages.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1)
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let mut addrs = s
        .to_socket_addrs()
        .map_err(|e| format!("{e} (give HOST:PORT, e.g. 127.0.0.1:2121 or localhost:2121)"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{s} resolves to no address"))
}

/// `--metrics-listen`: HOST:PORT as for --listen, or a bare port on loopback.
fn parse_metrics_listen(s: &str) -> Result<SocketAddr, String> {
    match s.parse::<u16>() {
        Ok(port) => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
        Err(_) => parse_listen(s),
    }
}

fn parse_rate(s: &str) -> Result<u64, String> {
    match parse_bytes(s)? {
        0 => Err("a rate must be more than 0 (leave it out for no cap)".into()),
        n => Ok(n),
    }
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("{e} (try 500M, 10G or a number of bytes)"))
}

/// A period for a background job: a duration of at least a second.
fn parse_every(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (try 7d, 12h or 30m)"))?;
    if d < Duration::from_secs(1) {
        return Err("at least 1s".into());
    }
    Ok(d)
}

fn maybe_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => duration(d, s),
        None => s.serialize_none(),
    }
}

/// A list of networks as one comma-separated string, as the flag and a settings file take it.
fn nets<S: serde::Serializer>(nets: &[ipnet::IpNet], s: S) -> Result<S::Ok, S::Error> {
    let text: Vec<String> = nets.iter().map(ToString::to_string).collect();
    s.collect_str(&text.join(","))
}

/// The database URL without its password, for `--check-config` and the logs.
fn redacted_url<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(
        &url.as_deref()
            .map(crate::cluster::redact)
            .unwrap_or_default(),
    )
}

fn duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ftpd.toml");
        std::fs::write(&path, file).unwrap();
        let mut argv: Vec<OsString> = vec!["ftpd".into(), "--config".into(), path.into()];
        argv.extend(args.iter().map(OsString::from));
        // The environment layer is exercised through clap's own `env` support; set variables
        // only for the keys a case needs and remove them after.
        for (k, v) in env {
            std::env::set_var(k, v);
        }
        let r = Config::load(&argv);
        for (k, _) in env {
            std::env::remove_var(k);
        }
        r
    }

    #[test]
    fn file_fills_in_what_flags_do_not_say() {
        let c = load(
            "root = \"/srv/x\"\nmax-connections = 7\nidle-timeout = \"2m\"\nallow-anonymous = true\n",
            &["--max-connections", "9"],
            &[],
        )
        .unwrap();
        assert_eq!(c.root(), std::path::Path::new("/srv/x"));
        assert_eq!(c.max_connections, 9, "the flag wins over the file");
        assert_eq!(c.idle_timeout, Duration::from_secs(120));
        assert!(c.allow_anonymous);
        assert_eq!(c.stall_timeout, Duration::from_secs(60), "default");
    }

    #[test]
    fn environment_beats_the_file() {
        let c = load(
            "root = \"/srv/x\"\nmax-file-size = \"1G\"\n",
            &[],
            &[("FTPD_MAX_FILE_SIZE", "2G")],
        )
        .unwrap();
        assert_eq!(c.max_file_size, Some(2 << 30));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_line() {
        let err = load("root = \"/x\"\n\nlisten-adress = \"1.2.3.4:5\"\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 3") && err.contains("listen-adress"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            load("root = \"/x\"\nidle-timeout = \"soon\"\n", &[], &[]).unwrap_err()
        );
        assert!(
            err.contains("line 2") && err.contains("`idle-timeout`") && !err.contains("--"),
            "{err}"
        );
        let err = load("root = [1]\n", &[], &[]).unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("root"), "{err}");
        let err = load("config = \"other.toml\"\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown setting `config`"), "{err}");
    }

    #[test]
    fn a_database_needs_shared_files_and_never_shows_its_password() {
        let url = "postgres://ftpd:s3cret@db:5432/ftpd";
        let err = load("root = \"/srv/x\"\n", &["--database", url], &[]).unwrap_err();
        assert!(format!("{err:#}").contains("--shared-root"), "{err:#}");
        let c = load(
            "root = \"/srv/x\"\nshared-root = true\n",
            &["--database", url],
            &[],
        )
        .unwrap();
        assert!(c.shared_root);
        let shown = c.effective();
        assert!(
            shown.contains("postgres://ftpd:***@db:5432/ftpd"),
            "{shown}"
        );
        assert!(!shown.contains("s3cret"), "{shown}");
        let err = load(
            "root = \"/srv/x\"\nusers = \"/etc/ftpd/users.toml\"\n",
            &["--database", url, "--shared-root"],
            &[],
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("--users"), "{err:#}");
    }

    #[test]
    fn metrics_listen_is_off_by_default_and_a_bare_port_is_loopback() {
        let c = load("root = \"/srv/x\"\n", &[], &[]).unwrap();
        assert_eq!(c.metrics_listen, None);
        let c = load("root = \"/srv/x\"\nmetrics-listen = \"9100\"\n", &[], &[]).unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
        let c = load(
            "root = \"/srv/x\"\n",
            &["--metrics-listen", "[::]:9101"],
            &[],
        )
        .unwrap();
        assert_eq!(c.metrics_listen, Some("[::]:9101".parse().unwrap()));
        assert!(c.effective().contains("metrics-listen = \"[::]:9101\""));
        let err = load(
            "root = \"/x\"\nmetrics-listen = \"nowhere:port\"\n",
            &[],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("line 2") && err.contains("metrics-listen"),
            "{err}"
        );
    }

    #[test]
    fn effective_settings_read_back_as_a_settings_file() {
        let c = load("root = \"/srv/x\"\nquota = \"10G\"\n", &[], &[]).unwrap();
        let text = c.effective();
        assert!(text.contains("root = \"/srv/x\""), "{text}");
        assert!(text.contains("idle-timeout = \"5m\""), "{text}");
        let again = load(&text, &[], &[]).unwrap();
        assert_eq!(again.quota, c.quota);
        assert_eq!(again.idle_timeout, c.idle_timeout);
    }
}
