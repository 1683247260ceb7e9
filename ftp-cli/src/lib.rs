//! ftp-cli as a library: [`client::Client`] speaks the protocol, [`command`] parses what people
//! type, [`app::App`] runs it, [`repl`] reads it from a terminal or a script.

pub mod app; // the session: runs parsed commands, the one place they take effect
mod batch; // many-file commands, moved side by side on several connections
pub mod client; // the protocol client: connection, login, requests, upload, download
pub mod command; // the command language: parsing only
mod completion; // tab completion's short-lived cache of remote listings
pub mod error; // every error, with its exit status and retry policy
pub mod keys; // the client's own key, for logins without a password
pub mod link; // the session's connections: how to dial, the link that reconnects
mod local_cmds; // commands on this machine only: lcd, lpwd, lls, !
mod mirror; // mirror: a tree made like another, moving only what changed
pub mod output; // all printing: command output to stdout, diagnostics to stderr
pub mod progress; // progress bars on stderr
pub mod repl; // the interactive shell and the script runners
mod retry; // one file moved in spite of a failing link: reconnect, resume
mod tree; // directory trees and patterns expanded into the files they move
pub mod trust; // whom the client trusts to be the server: known_hosts, a key, a CA
