//! Logs to stderr (journald keeps them): human or JSON lines, with a filter that SIGHUP can
//! change without a restart.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

use crate::config::{Config, LogFormat};

/// Changes the log filter of the running daemon.
#[derive(Clone)]
pub struct LogLevel(reload::Handle<EnvFilter, Registry>);

impl LogLevel {
    /// Puts the filter `config` asks for in force.
    pub fn set(&self, config: &Config) -> anyhow::Result<()> {
        self.0.reload(filter(config)?)?;
        Ok(())
    }
}

fn filter(config: &Config) -> anyhow::Result<EnvFilter> {
    Ok(match &config.log_level {
        Some(level) => EnvFilter::try_new(level)?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    })
}

/// Installs the global subscriber.
pub fn init(config: &Config) -> anyhow::Result<LogLevel> {
    let (filter, handle) = reload::Layer::new(filter(config)?);
    let registry = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Human => registry
            .with(fmt.with_ansi(std::io::stderr().is_terminal()))
            .init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).init(),
    }
    Ok(LogLevel(handle))
}
