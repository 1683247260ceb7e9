//! An S3 client layer for the object-storage backend (issue 19): the operations a file server
//! needs, on rusty-s3's signing and reqwest, each with a capped reply and a timeout; resumable
//! uploads verified before they become visible; the sweeper; the `--check-config` probe; and
//! [`S3Backend`], the `storage::Backend` on all of it.
//! The design, and how each promise of the local root is kept on S3, is docs/S3.md.

mod backend;
mod client;
mod config;
mod error;
mod mtime;
mod probe;
mod registry;
mod upload;
mod usage;
mod xml;

pub use backend::{S3Backend, S3Options, DEFAULT_PART_BUDGET};
pub use client::{
    listing_time, Client, Download, ListPage, ObjectEntry, ObjectMeta, OpenUpload, PartsPage,
    StoredPart, Timeouts, UploadsPage,
};
pub use config::{Config, Credentials};
pub use error::{Error, ErrorKind, Result};
pub use mtime::MTIME_PREFIX;
pub use probe::{probe, Conditional, ProbeReport};
pub use registry::{BucketRegistry, UploadRegistry};
pub use upload::{
    bare_etag, digest_key, read_digest, record_key, sweep, sweep_in, write_digest, DigestRecord,
    Finished, Lease, PartBudget, PartSize, RecordedPart, ResumableUpload, UploadRecord, UploadSpec,
    DEFAULT_PART_SIZE, DIGESTS_PREFIX, MIN_PART_SIZE, RESERVED_PREFIX, UPLOADS_PREFIX,
};
pub use usage::{HomeCount, UsageLedger};
