//! The XML replies of the S3 API that this crate reads, as serde types for quick-xml.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(rename = "Code")]
    pub code: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct InitiateMultipartUploadResult {
    #[serde(rename = "UploadId")]
    pub upload_id: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CompleteMultipartUploadResult {
    #[serde(rename = "ETag")]
    pub etag: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CopyObjectResult {
    #[serde(rename = "ETag")]
    pub etag: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListBucketResult {
    #[serde(rename = "Contents", default)]
    pub contents: Vec<Contents>,
    #[serde(rename = "CommonPrefixes", default)]
    pub common_prefixes: Vec<CommonPrefix>,
    #[serde(rename = "IsTruncated", default)]
    pub is_truncated: bool,
    #[serde(rename = "NextContinuationToken")]
    pub next_continuation_token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Contents {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "Size")]
    pub size: u64,
    #[serde(rename = "ETag", default)]
    pub etag: String,
    #[serde(rename = "LastModified", default)]
    pub last_modified: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CommonPrefix {
    #[serde(rename = "Prefix")]
    pub prefix: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListMultipartUploadsResult {
    #[serde(rename = "Upload", default)]
    pub uploads: Vec<Upload>,
    #[serde(rename = "IsTruncated", default)]
    pub is_truncated: bool,
    #[serde(rename = "NextKeyMarker")]
    pub next_key_marker: Option<String>,
    #[serde(rename = "NextUploadIdMarker")]
    pub next_upload_id_marker: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Upload {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "UploadId")]
    pub upload_id: String,
    #[serde(rename = "Initiated", default)]
    pub initiated: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListPartsResult {
    #[serde(rename = "Part", default)]
    pub parts: Vec<Part>,
    #[serde(rename = "IsTruncated", default)]
    pub is_truncated: bool,
    #[serde(rename = "NextPartNumberMarker")]
    pub next_part_number_marker: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Part {
    #[serde(rename = "PartNumber")]
    pub number: u32,
    #[serde(rename = "ETag")]
    pub etag: String,
    #[serde(rename = "Size")]
    pub size: u64,
}
