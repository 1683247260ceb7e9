//! The daemon's settings: every one a command-line flag with a documented default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Serve one directory to ftp-cli clients over the ftpd protocol (docs/PROTOCOL.md).
#[derive(Parser, Debug, Clone)]
#[command(name = "ftpd", version)]
pub struct Config {
    /// Directory to serve; uploads are staged in its private `.ftpd` subdirectory.
    #[arg(long, env = "FTPD_ROOT")]
    pub root: PathBuf,

    /// Address to listen on; port 0 picks a free port (the bound address is logged).
    #[arg(long, env = "FTPD_LISTEN", default_value = "127.0.0.1:2121")]
    pub listen: SocketAddr,

    /// Users file (TOML, one [[user]] table each: name, secret or secret_file, home,
    /// read_only). Without it, anyone who can connect has full access to the root.
    #[arg(long, env = "FTPD_USERS")]
    pub users: Option<PathBuf>,

    /// Serve anonymously (no --users) on an address that is not loopback.
    #[arg(long)]
    pub allow_anonymous: bool,

    /// Most connections served at once; more are refused with a `busy` error.
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,

    /// Most connections from one IP address at once; more are refused with a `busy` error.
    #[arg(long, default_value_t = 64)]
    pub max_connections_per_ip: usize,

    /// Largest file an upload may create (e.g. 10G, 500MiB); none by default.
    #[arg(long, value_parser = parse_bytes)]
    pub max_file_size: Option<u64>,

    /// Most bytes all files in the root may take together (e.g. 100G); none by default.
    /// Uploads that would go over it are refused before any byte is sent.
    #[arg(long, value_parser = parse_bytes)]
    pub quota: Option<u64>,

    /// Time a new client has to complete the hello exchange.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// Time a client may stay silent between commands.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Time a transfer may wait for the next frame, or for the peer to take one, before it fails.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub stall_timeout: Duration,

    /// After SIGTERM or SIGINT, time given to transfers in flight before they are cut.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Staged bytes of an interrupted upload are kept this long for `put -c` to resume, then
    /// removed (checked at startup and every hour).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub staging_max_age: Duration,

    /// Chunk size for downloads, in bytes (capped by what the client accepts).
    #[arg(long, default_value_t = protocol::DEFAULT_CHUNK,
          value_parser = clap::value_parser!(u32).range(1..=protocol::MAX_BODY as i64))]
    pub chunk_size: u32,
}

impl Config {
    /// Settings for a root with every other value at its default (tests, embedding).
    pub fn for_root(root: impl Into<PathBuf>) -> Self {
        let mut c = Config::parse_from(["ftpd", "--root", "."]);
        c.root = root.into();
        c
    }
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("{e} (try 500M, 10G or a number of bytes)"))
}
