//! In-process tests: the daemon (`ftpd::Server`) and the client (`ftp_cli`'s `Client`, or a raw
//! peer writing frames by hand) in one test process, over `tokio::io::duplex` pipes.
//!
//! They are for the protocol's corner cases, which a real network only makes slow and a real
//! client never sends: the end-to-end tier (`tests/e2e`) runs the binaries over TCP. Nothing
//! here binds a port, starts a process or waits for a log line.

// The helpers every test is written with: `InProcess` and its `Daemon`, the client and the raw
// peer over a pipe, test data and the frames a sender makes of it.
mod util;

// Whole files survive put then get byte for byte, around the chunk size, with either digest.
mod transfer;

// Uploads refused part-way (a bad digest, a chunk out of place, an early or wrong `eof`) leave
// no file and a connection in step; an interrupted upload resumes where it stopped.
mod upload;

// Downloads: a cancel that comes too late is ignored, one that comes in time ends in `abort`.
mod download;

// Listings: a directory too large for one frame arrives whole.
mod listing;

// The session itself: a message of a type the daemon does not know is answered and survived.
mod session;

// Users: what a user is told never names where their home is in the root.
mod auth;

// The daemon on a backend behind `storage::Backend` (in memory, standing in for S3): transfers,
// resume, listings and the namespace commands through the remote path.
mod remote;
