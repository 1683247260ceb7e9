//! End-to-end tests: a real `ftpd` on a temp root and port 0, driven by the real `ftp-cli`.
//!
//! Both binaries are found next to this test executable, so build the workspace first:
//! `cargo test --workspace` does.

// The helpers every test is written with: `Daemon` and its builder, a `Site` around a root, the
// `Cli` builder, secrets, process guards, file comparison.
mod util;

// TLS for the tests' own peers: a raw client that takes any key, an identity for fake servers.
mod tls;

// Whom the client trusts: first contact at a terminal and in scripts, changed keys, CAs, a
// certificate reloaded on SIGHUP, TLS and plaintext mismatched, and what relays, recorders and
// impostors in between get.
mod trust;

// A peer that speaks the protocol's frames by hand, for what the real client never sends.
mod raw;

// Whole files survive put then get byte for byte, at the sizes around chunk boundaries and with
// names that need quoting.
mod transfer;

// Trees of small files on the batch engine: pipelined puts and gets answered in order, each
// file's fate its own, a cut pipeline resumed where it stopped.
mod batch;

// mirror both ways: only what changed moves, a second run moves nothing, --delete, --dry-run,
// --checksum, filters.
mod mirror;

// Several clients at once, and a client killed mid-upload that leaves nothing half-written.
mod concurrency;

// Refusing to overwrite without `-f`, missing files on either side, and stopping at the first
// failed command, whether commands come from `-c`, `-b` or stdin.
mod overwrite;

// A proxy that corrupts, cuts and stalls the stream; a daemon killed mid-upload; a full disk:
// each ends in an identical file or a clear error, never a wrong file.
mod faults;

// Users: logging in both ways, homes, read-only users, and refusing unsafe users files.
mod auth;

// Logins with keys (`ftp-cli keygen`) and stored verifiers (`ftpd adduser`, `ftpd passwd`).
mod keys;

// Every client command and its failures, from `ls` to a 100,000-file listing, JSON and exit codes.
mod client;

// The interactive shell on a real pseudo-terminal: tab completion, Ctrl-C and Ctrl-D.
mod pty;

// The habits of lftp and sftp users: ls's options and globs, cd -, ~, rm -r, cat, du, open,
// suggestions, and errors that name the command and its line.
mod habits;

// Running as a service: systemd notifications and sockets, SIGTERM and SIGHUP, settings, logs.
mod service;

// Hostile input and limits: garbage frames, path tricks, floods, slow clients, quotas.
mod abuse;

// A server that lies: hostile names never leave the destination, and resuming never hides the
// user's own file.
mod untrusted;

// `ftpd scrub` against digests recorded at upload: rot found, clean roots pass, files without a
// record counted; `ftpd rerecord` for files changed on purpose.
mod scrub;

// A transfer through a daemon that is killed and restarted; --json sessions whose every line
// parses.
mod scripts;

// The metrics listener: counters matching the transfers made, promtool's lint, readiness
// through a drain, and a real Prometheus scraping the daemon.
mod metrics;
// Per-user limits: one rate cap shared by a user's sessions, caps so low a chunk takes longer
// than the stall timeout, per-user quotas and session caps, limits changed by SIGHUP.
mod limits;

// Behind a load balancer: HAProxy with send-proxy-v2 in front of the daemon, the client's
// address in the logs and limits, and PROXY headers from anyone else refused.
mod proxy;

// The daemon on S3 against a real S3 server (moto): round trips, odd names, listings as on the
// local root, no clobber, cut and killed uploads resumed from the last part, the sweeper,
// startup refusals in one line, homes as prefixes.
mod s3;

// Several instances as one service (issue 20): two daemons on one PostgreSQL (e2e::postgres, a
// private server per test binary) and one shared root or bucket: users, files, limits, the
// login throttle and interrupted uploads the same whichever instance answers.
mod cluster;

// A user's limits across two instances of a service on one PostgreSQL: a session cap held on
// one instance refuses a session on another; one rate cap leased by both.
mod cluster_limits;

// Several instances as one service: login failures counted in their shared PostgreSQL, so a
// guesser spreading over instances is throttled as on one; a database that does not answer
// refuses logins with a retryable busy.
mod cluster_auth;
