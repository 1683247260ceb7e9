//! What every test against moto needs: a moto server per test on a free port, a client
//! configuration for it, and test bytes. Without `moto_server` the tests print a note and
//! pass, except under CI (env CI set), where they fail: CI installs it (.ci/run).
#![allow(dead_code)] // each test binary uses its own part of it

use std::net::{Ipv4Addr, TcpListener};

use s3store::{Client, Config, Credentials};

pub use e2e::moto::{start as moto, Moto};

pub fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap().port()
}

pub fn config(port: u16, bucket: &str, prefix: &str) -> Config {
    Config {
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
        endpoint: Some(format!("http://127.0.0.1:{port}").parse().unwrap()),
        region: "us-east-1".to_owned(),
        credentials: Credentials {
            key: "testing".to_owned(),
            secret: "testing".to_owned(),
            token: None,
        },
    }
}

/// Deterministic bytes that differ at every offset within a part.
pub fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// The whole body of `key` from `offset`, through the client layer.
pub async fn get_all(c: &Client, key: &str, offset: u64) -> Vec<u8> {
    let mut d = c.get(key, offset, None).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = d.chunk().await.unwrap() {
        out.extend_from_slice(&chunk);
    }
    assert_eq!(out.len() as u64, d.len);
    out
}

/// How many multipart uploads are open in the bucket under the client's prefix.
pub async fn open_uploads(c: &Client) -> usize {
    c.list_uploads_page("", None).await.unwrap().uploads.len()
}
