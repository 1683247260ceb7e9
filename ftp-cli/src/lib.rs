//! ftp-cli as a library: [`client::Client`] speaks the protocol, [`command`] parses what people
//! type, [`app::App`] runs it, [`repl`] reads it from a terminal or a script.

pub mod app;
pub mod client;
pub mod command;
pub mod error;
pub mod progress;
pub mod repl;
