//! The S3 operations this project needs, each one signed request with a capped reply and a
//! timeout: rusty-s3 signs, reqwest sends.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use jiff::Timestamp;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use rusty_s3::{Bucket, Method, UrlStyle};
use url::Url;

use crate::config::Config;
use crate::error::{kind_of, Error, ErrorKind, Result};
use crate::xml;

/// The most a reply other than an object's body may hold: a listing page of 1,000 keys of
/// 1 KiB each is about 1.3 MB of XML.
const MAX_REPLY: usize = 4 << 20;
/// How long a presigned request stays valid; it is used at once.
const SIGNATURE_TTL: u64 = 15 * 60;

/// How long to wait for what.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For a TCP (and TLS) connection to the endpoint.
    pub connect: Duration,
    /// For the whole of a small request (head, list, complete, delete...).
    pub request: Duration,
    /// For the whole of one part's upload or one put: a part of 8 MiB at 100 kB/s.
    pub transfer: Duration,
    /// For the next bytes of a streamed download.
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(60),
            transfer: Duration::from_secs(120),
            read: Duration::from_secs(60),
        }
    }
}

/// What HEAD tells about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    pub etag: String,
    /// Last-Modified, seconds since the Unix epoch, when the service sent a readable one.
    pub modified: Option<i64>,
}

/// One object in a listing, its key relative to the configured prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEntry {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified: String,
}

/// One page of ListObjectsV2.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectEntry>,
    /// The "directories" one level down, relative to the configured prefix, ending with `/`.
    pub prefixes: Vec<String>,
    /// Pass to the next call for the next page; `None` on the last.
    pub next: Option<String>,
}

/// An open multipart upload, its key relative to the configured prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    pub key: String,
    pub upload_id: String,
    /// When it was created, as the service wrote it (RFC 3339).
    pub initiated: String,
}

/// One page of ListMultipartUploads.
#[derive(Debug, Clone, Default)]
pub struct UploadsPage {
    pub uploads: Vec<OpenUpload>,
    /// (key marker, upload id marker) for the next page.
    pub next: Option<(String, String)>,
}

/// A part the service holds for an open upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPart {
    pub number: u32,
    pub etag: String,
    pub size: u64,
}

/// One page of ListParts.
#[derive(Debug, Clone, Default)]
pub struct PartsPage {
    pub parts: Vec<StoredPart>,
    pub next: Option<u32>,
}

/// A downloading object body: take it chunk by chunk, never whole.
#[derive(Debug)]
pub struct Download {
    /// The bytes this reply will carry (the range's length for a ranged get).
    pub len: u64,
    /// The object's whole size, when the service said (Content-Range, or Content-Length).
    pub total: Option<u64>,
    response: reqwest::Response,
    /// Read timeout per chunk.
    read: Duration,
}

impl Download {
    /// The next bytes of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        match tokio::time::timeout(self.read, self.response.chunk()).await {
            Ok(r) => Ok(r?),
            Err(elapsed) => Err(Error::with(ErrorKind::Unreachable, elapsed)),
        }
    }
}

/// A client for one bucket, under one prefix. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    bucket: Bucket,
    config: Config,
    timeouts: Timeouts,
}

fn method(m: Method) -> reqwest::Method {
    match m {
        Method::Head => reqwest::Method::HEAD,
        Method::Get => reqwest::Method::GET,
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
        Method::Delete => reqwest::Method::DELETE,
    }
}

/// Moves a paginated listing on: `true` with `token` set to the next page's, `false` after the
/// last page. A service that hands back the token it was given would have us loop forever, so
/// that is an error.
pub(crate) fn next_page<T: PartialEq>(token: &mut Option<T>, next: Option<T>) -> Result<bool> {
    match next {
        Some(t) if token.as_ref() != Some(&t) => {
            *token = Some(t);
            Ok(true)
        }
        Some(_) => Err(protocol("a listing does not advance")),
        None => Ok(false),
    }
}

fn protocol(what: &str) -> Error {
    Error::with(ErrorKind::Protocol, what.to_owned())
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    quick_xml::de::from_reader(body).map_err(|e| Error::with(ErrorKind::Protocol, e))
}

/// A reply of 200 that says `<Error>` in its body (CompleteMultipartUpload and CopyObject may
/// fail after the headers are sent).
fn error_in_body(body: &[u8]) -> Option<Error> {
    let head = &body[..body.len().min(512)];
    let text = String::from_utf8_lossy(head);
    if !text.contains("<Error>") {
        return None;
    }
    let code = parse::<xml::ErrorBody>(body).ok().map(|e| e.code);
    Some(Error::with(
        kind_of(200, code.as_deref()),
        format!("error in a 200 reply: {code:?}"),
    ))
}

impl Client {
    pub fn new(config: Config, timeouts: Timeouts) -> Result<Client> {
        let bad = |what: &str| Error::with(ErrorKind::Config, what.to_owned());
        let (endpoint, style) = match &config.endpoint {
            Some(e) => (e.clone(), UrlStyle::Path),
            None => (
                Url::parse(&format!("https://s3.{}.amazonaws.com", config.region))
                    .map_err(|_| bad("bad region name"))?,
                UrlStyle::VirtualHost,
            ),
        };
        let bucket = Bucket::new(
            endpoint,
            style,
            config.bucket.clone(),
            config.region.clone(),
        )
        .map_err(|_| bad("the endpoint must be an http:// or https:// URL with a host"))?;
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.read)
            .build()
            .map_err(|e| Error::with(ErrorKind::Config, e))?;
        Ok(Client {
            http,
            bucket,
            config,
            timeouts,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.config.prefix)
    }

    fn relative(&self, key: String) -> String {
        match key.strip_prefix(&self.config.prefix) {
            Some(k) => k.to_owned(),
            None => key,
        }
    }

    /// A presigned URL for `method` on `key` (or the bucket), with these query parameters and
    /// signed headers (names lowercase).
    fn sign(
        &self,
        m: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Result<Url> {
        let url = match key {
            Some(k) => self
                .bucket
                .object_url(&self.full_key(k))
                .map_err(|_| protocol("key not expressible as a URL"))?,
            None => self.bucket.base_url().clone(),
        };
        // rusty-s3 merges its own sorted parameters with ours: ours must be sorted too.
        let mut query = query.to_vec();
        query.sort_unstable();
        let mut headers = headers.to_vec();
        headers.sort_unstable();
        let c = &self.config.credentials;
        Ok(rusty_s3::signing::sign(
            &Timestamp::now(),
            m,
            url,
            &c.key,
            &c.secret,
            c.token.as_deref(),
            &self.config.region,
            SIGNATURE_TTL,
            query.iter().copied(),
            headers.iter().copied(),
        ))
    }

    /// Sends a signed request and turns a non-success status into a typed error.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        m: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        signed: &[(&str, &str)],
        unsigned: &[(&str, String)],
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<reqwest::Response> {
        let url = self.sign(m, key, query, signed)?;
        let mut headers = HeaderMap::new();
        for (name, value) in signed
            .iter()
            .map(|(n, v)| (*n, (*v).to_owned()))
            .chain(unsigned.iter().map(|(n, v)| (*n, v.clone())))
        {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| protocol("header"))?;
            let value = HeaderValue::from_str(&value).map_err(|_| protocol("header value"))?;
            headers.insert(name, value);
        }
        let mut req = self
            .http
            .request(method(m), url)
            .headers(headers)
            .timeout(timeout);
        if let Some(body) =
            body.or_else(|| matches!(m, Method::Put | Method::Post).then(Bytes::new))
        {
            // Said explicitly, even when 0: servers refuse a PUT without it (411), and hyper
            // leaves it out of an empty body.
            req = req
                .header(reqwest::header::CONTENT_LENGTH, body.len())
                .body(body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        if status.is_success() || status.as_u16() == 206 {
            return Ok(resp);
        }
        let body = read_capped(resp, MAX_REPLY).await.unwrap_or_default();
        let code = parse::<xml::ErrorBody>(&body).ok().map(|e| e.code);
        Err(Error::with(
            kind_of(status.as_u16(), code.as_deref()),
            format!("HTTP {status}, code {code:?}"),
        ))
    }

    async fn small(
        &self,
        m: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        signed: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<(HeaderMap, Bytes)> {
        let resp = self
            .send(m, key, query, signed, &[], body, self.timeouts.request)
            .await?;
        let headers = resp.headers().clone();
        Ok((headers, read_capped(resp, MAX_REPLY).await?))
    }

    /// Creates the bucket (for tests and set-up scripts; the daemon never does).
    pub async fn create_bucket(&self) -> Result<()> {
        self.small(Method::Put, None, &[], &[], None).await?;
        Ok(())
    }

    /// Size and ETag of an object.
    pub async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let (h, _) = self.small(Method::Head, Some(key), &[], &[], None).await?;
        let size = header(&h, "content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| protocol("HEAD without Content-Length"))?;
        Ok(ObjectMeta {
            size,
            etag: header(&h, "etag").unwrap_or_default(),
            modified: header(&h, "last-modified").and_then(|t| http_date(&t)),
        })
    }

    /// The object's bytes from `offset` (and up to `end`, exclusive), streamed.
    pub async fn get(&self, key: &str, offset: u64, end: Option<u64>) -> Result<Download> {
        let range = match end {
            Some(e) if e <= offset => return Err(protocol("empty range")),
            Some(e) => Some(format!("bytes={offset}-{}", e - 1)),
            None if offset > 0 => Some(format!("bytes={offset}-")),
            None => None,
        };
        let unsigned: Vec<(&str, String)> = range.into_iter().map(|r| ("range", r)).collect();
        // A body may take long; the per-chunk read timeout bounds each wait instead.
        let resp = self
            .send(
                Method::Get,
                Some(key),
                &[],
                &[],
                &unsigned,
                None,
                Duration::from_secs(u64::from(u32::MAX)),
            )
            .await?;
        let partial = resp.status().as_u16() == 206;
        if !unsigned.is_empty() && !partial {
            return Err(protocol("the service ignored the Range header"));
        }
        let len = resp
            .content_length()
            .ok_or_else(|| protocol("GET without Content-Length"))?;
        let total = if partial {
            header(resp.headers(), "content-range")
                .and_then(|r| r.rsplit('/').next().and_then(|t| t.parse().ok()))
        } else {
            Some(len)
        };
        Ok(Download {
            len,
            total,
            response: resp,
            read: self.timeouts.read,
        })
    }

    /// Stores `body` as `key` in one request; with `create_only`, only if no such key exists
    /// (`If-None-Match: *`, honoured by AWS since 2024; see [`crate::probe`]).
    pub async fn put(&self, key: &str, body: Bytes, create_only: bool) -> Result<String> {
        let signed: &[(&str, &str)] = if create_only {
            &[("if-none-match", "*")]
        } else {
            &[]
        };
        let resp = self
            .send(
                Method::Put,
                Some(key),
                &[],
                signed,
                &[],
                Some(body),
                self.timeouts.transfer,
            )
            .await?;
        let etag = header(resp.headers(), "etag").unwrap_or_default();
        read_capped(resp, MAX_REPLY).await?;
        Ok(etag)
    }

    /// Opens a multipart upload for `key`; its parts are invisible until completed.
    pub async fn create_multipart(&self, key: &str) -> Result<String> {
        let (_, body) = self
            .small(Method::Post, Some(key), &[("uploads", "")], &[], None)
            .await?;
        Ok(parse::<xml::InitiateMultipartUploadResult>(&body)?.upload_id)
    }

    /// Uploads part `number` (1 to 10,000) and returns its ETag.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
    ) -> Result<String> {
        let n = number.to_string();
        let resp = self
            .send(
                Method::Put,
                Some(key),
                &[("partNumber", &n), ("uploadId", upload_id)],
                &[],
                &[],
                Some(body),
                self.timeouts.transfer,
            )
            .await?;
        let etag = header(resp.headers(), "etag").ok_or_else(|| protocol("part without ETag"))?;
        read_capped(resp, MAX_REPLY).await?;
        Ok(etag)
    }

    /// Completes the upload from these parts (in order); with `create_only`, only if `key`
    /// does not exist (`If-None-Match: *`, where the service honours it).
    pub async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
        create_only: bool,
    ) -> Result<String> {
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (n, etag) in parts {
            let etag = etag.replace('&', "&amp;").replace('"', "&quot;");
            xml.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let signed: &[(&str, &str)] = if create_only {
            &[("if-none-match", "*")]
        } else {
            &[]
        };
        let (_, body) = self
            .small(
                Method::Post,
                Some(key),
                &[("uploadId", upload_id)],
                signed,
                Some(Bytes::from(xml)),
            )
            .await?;
        if let Some(e) = error_in_body(&body) {
            return Err(e);
        }
        Ok(parse::<xml::CompleteMultipartUploadResult>(&body)?
            .etag
            .unwrap_or_default())
    }

    /// Drops an open upload and its parts.
    pub async fn abort(&self, key: &str, upload_id: &str) -> Result<()> {
        self.small(
            Method::Delete,
            Some(key),
            &[("uploadId", upload_id)],
            &[],
            None,
        )
        .await?;
        Ok(())
    }

    /// One page of the objects under `prefix` (relative to the configured one); with a
    /// delimiter, the keys below the next one are folded into `prefixes`.
    pub async fn list_page(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
    ) -> Result<ListPage> {
        self.list_page_of(prefix, delimiter, token, None).await
    }

    /// [`Client::list_page`] of at most `max_keys` entries (the service's default is 1,000):
    /// a question that one or two entries answer (is this prefix empty?) asks for no more.
    pub async fn list_page_of(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
        max_keys: Option<u16>,
    ) -> Result<ListPage> {
        let full = self.full_key(prefix);
        let max = max_keys.map(|m| m.to_string());
        let mut query = vec![("list-type", "2"), ("prefix", full.as_str())];
        if let Some(d) = delimiter {
            query.push(("delimiter", d));
        }
        if let Some(m) = &max {
            query.push(("max-keys", m));
        }
        if let Some(t) = token {
            query.push(("continuation-token", t));
        }
        let (_, body) = self.small(Method::Get, None, &query, &[], None).await?;
        let r: xml::ListBucketResult = parse(&body)?;
        Ok(ListPage {
            objects: r
                .contents
                .into_iter()
                .map(|c| ObjectEntry {
                    key: self.relative(c.key),
                    size: c.size,
                    etag: c.etag,
                    last_modified: c.last_modified,
                })
                .collect(),
            prefixes: r
                .common_prefixes
                .into_iter()
                .map(|p| self.relative(p.prefix))
                .collect(),
            next: r.next_continuation_token.filter(|_| r.is_truncated),
        })
    }

    /// All objects and prefixes under `prefix`, at most `max` entries (more is an error: a
    /// caller that needs more pages through [`Client::list_page`] itself).
    pub async fn list_all(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        max: usize,
    ) -> Result<ListPage> {
        let mut all = ListPage::default();
        let mut token = None;
        loop {
            let page = self.list_page(prefix, delimiter, token.as_deref()).await?;
            all.objects.extend(page.objects);
            all.prefixes.extend(page.prefixes);
            if all.objects.len() + all.prefixes.len() > max {
                return Err(protocol("listing longer than the cap"));
            }
            if !next_page(&mut token, page.next)? {
                return Ok(all);
            }
        }
    }

    /// One page of the open multipart uploads under `prefix`.
    pub async fn list_uploads_page(
        &self,
        prefix: &str,
        marker: Option<(&str, &str)>,
    ) -> Result<UploadsPage> {
        let full = self.full_key(prefix);
        let mut query = vec![("uploads", ""), ("prefix", full.as_str())];
        if let Some((k, u)) = marker {
            query.push(("key-marker", k));
            query.push(("upload-id-marker", u));
        }
        let (_, body) = self.small(Method::Get, None, &query, &[], None).await?;
        let r: xml::ListMultipartUploadsResult = parse(&body)?;
        let next = match (r.is_truncated, r.next_key_marker, r.next_upload_id_marker) {
            (true, Some(k), Some(u)) => Some((k, u)),
            (true, _, _) => return Err(protocol("truncated upload listing without markers")),
            _ => None,
        };
        Ok(UploadsPage {
            uploads: r
                .uploads
                .into_iter()
                .map(|u| OpenUpload {
                    key: self.relative(u.key),
                    upload_id: u.upload_id,
                    initiated: u.initiated,
                })
                .collect(),
            next,
        })
    }

    /// One page of the parts the service holds for an open upload.
    pub async fn list_parts_page(
        &self,
        key: &str,
        upload_id: &str,
        marker: Option<u32>,
    ) -> Result<PartsPage> {
        let m = marker.map(|m| m.to_string());
        let mut query = vec![("uploadId", upload_id)];
        if let Some(m) = &m {
            query.push(("part-number-marker", m));
        }
        let (_, body) = self
            .small(Method::Get, Some(key), &query, &[], None)
            .await?;
        let r: xml::ListPartsResult = parse(&body)?;
        Ok(PartsPage {
            parts: r
                .parts
                .into_iter()
                .map(|p| StoredPart {
                    number: p.number,
                    etag: p.etag,
                    size: p.size,
                })
                .collect(),
            next: r.next_part_number_marker.filter(|_| r.is_truncated),
        })
    }

    /// All parts of an open upload (at most 10,000 by the S3 limits).
    pub async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Vec<StoredPart>> {
        let mut all = Vec::new();
        let mut marker = None;
        loop {
            let page = self.list_parts_page(key, upload_id, marker).await?;
            all.extend(page.parts);
            if all.len() > 10_000 {
                return Err(protocol("more parts than S3 allows"));
            }
            if !next_page(&mut marker, page.next)? {
                return Ok(all);
            }
        }
    }

    /// Server-side copy of one object up to 5 GiB (CopyObject's limit; beyond it a copy is
    /// UploadPartCopy in parts, which the rename design refuses for now).
    pub async fn copy(&self, from: &str, to: &str) -> Result<String> {
        let source = format!(
            "/{}/{}",
            self.config.bucket,
            encode_key(&self.full_key(from))
        );
        let (_, body) = self
            .small(
                Method::Put,
                Some(to),
                &[],
                &[("x-amz-copy-source", &source)],
                None,
            )
            .await?;
        if let Some(e) = error_in_body(&body) {
            return Err(e);
        }
        Ok(parse::<xml::CopyObjectResult>(&body)?
            .etag
            .unwrap_or_default())
    }

    /// Removes an object; removing a missing one succeeds, as S3 says.
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.small(Method::Delete, Some(key), &[], &[], None)
            .await?;
        Ok(())
    }
}

/// An HTTP date (`Wed, 21 Oct 2015 07:28:00 GMT`, RFC 2822's form) as Unix seconds.
fn http_date(text: &str) -> Option<i64> {
    jiff::fmt::rfc2822::parse(text)
        .ok()
        .map(|z| z.timestamp().as_second())
}

/// A listing's `LastModified` (RFC 3339) as Unix seconds.
pub fn listing_time(text: &str) -> Option<i64> {
    text.parse::<Timestamp>().ok().map(|t| t.as_second())
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)?.to_str().ok().map(str::to_owned)
}

/// A key percent-encoded for `x-amz-copy-source`, keeping `/`.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A reply body, refused once longer than `cap`.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Bytes> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(protocol("reply too long"));
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > cap {
            return Err(protocol("reply too long"));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::next_page;

    /// A listing moves on while the service gives a new token, ends without one, and a
    /// service that gives back the token it was sent is refused, not followed forever.
    #[test]
    fn a_listing_that_does_not_advance_is_an_error() {
        let mut token = None;
        assert!(next_page(&mut token, Some("a")).unwrap());
        assert_eq!(token, Some("a"));
        assert!(next_page(&mut token, Some("b")).unwrap());
        assert!(next_page(&mut token, Some("b")).is_err());
        assert!(!next_page(&mut token, None).unwrap());
    }
}
