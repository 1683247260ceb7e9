//! The ftpd daemon as a library: [`Server::new`] opens the root, [`Server::run`] serves a
//! listener the caller bound, until the shutdown future the caller chose completes.

pub mod accounts;
pub mod admin;
mod admission;
mod auth;
pub mod cluster;
pub mod cmd;
pub mod config;
mod error;
mod hashing;
pub mod logging;
pub mod metrics;
mod pipeline;
mod private;
mod proxy;
mod reply;
mod scrub;
mod server;
mod session;
mod shutdown;
pub mod store;
mod throttle;
pub mod tls;
mod transport;
pub mod users;

pub use config::Config;
pub use error::SessionError;
pub use server::{bind, Server, Shared};
