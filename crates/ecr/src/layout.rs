//! An OCI image layout in S3 (issue 35): `s3://bucket/prefix` holds `prefix/oci-layout`,
//! `prefix/index.json` and `prefix/blobs/sha256/<hex>`, the directory layout's files as objects.
//!
//! Blobs are streamed: one at most `part_size` bytes is sent with a single `PutObject` after its
//! digest and size are checked; a larger one goes up as an S3 multipart upload, one part in
//! memory at a time, and the upload is completed only once the whole blob matched its digest
//! (aborted otherwise), so a blob object exists only with the right bytes. An upload cut short
//! (the process killed) is left incomplete and ignored: the next export starts a new one, and the
//! bucket's `AbortIncompleteMultipartUpload` lifecycle rule removes the stale parts.

use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ServerSideEncryption,
};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use oci::digest::Verifier;
use oci::layout::{BlobStream, FileVersion, LayoutStore, PartUpload, PartUploads};
use oci::{BlobRef, Digest};

use crate::aws::{sdk_config, AwsSettings};
use crate::signing::KmsKeyArn;

/// Part size of a multipart upload, and the largest blob sent with one `PutObject`: 8 MiB, the
/// AWS CLI's and SDK transfer managers' default `multipart_chunksize`; one part of each blob
/// being written is held in memory.
pub const DEFAULT_PART_BYTES: u64 = 8 << 20;
/// S3's smallest part but the last ("Amazon S3 multipart upload limits",
/// <https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html>: "Part size 5 MiB to
/// 5 GiB. There is no minimum size limit on the last part of your multipart upload").
pub const MIN_PART_BYTES: u64 = 5 << 20;
/// S3's largest part (same page).
pub const MAX_PART_BYTES: u64 = 5 << 30;
/// S3's most parts in one upload (same page: "Maximum number of parts per upload 10,000", part
/// numbers 1 to 10,000).
pub const MAX_PARTS: u64 = 10_000;

fn layout_error(path: impl Into<String>, reason: impl Into<String>) -> oci::Error {
    oci::Error::Layout {
        path: path.into(),
        reason: reason.into(),
    }
}

/// An SDK error as a layout error naming the object and the call.
fn s3_error<E>(
    operation: &'static str,
    path: &str,
    err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> oci::Error
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let api = crate::Error::api(operation, path, err);
    // A HEAD's error has no body, so no code: its status says it.
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = match &api {
        crate::Error::Api { code, .. } => code.as_deref(),
        _ => None,
    };
    let denied = status == Some(403) || matches!(code, Some("AccessDenied" | "Forbidden"));
    let hint = if denied {
        "; check the credentials may use the bucket (s3:GetObject, s3:PutObject, \
         s3:ListBucket), that it is owned by the expected account, and the KMS key's policy"
    } else if status == Some(301) || code == Some("PermanentRedirect") {
        "; the bucket is in another region: set AWS_REGION to its region"
    } else {
        ""
    };
    layout_error(path, format!("{api}{hint}"))
}

/// The part size for a blob of `size` bytes: `preferred` (clamped to S3's 5 MiB..5 GiB), made
/// larger, in whole MiB, when the blob would need more than 10,000 parts of it. `None` when no
/// part size fits (over 10,000 x 5 GiB).
pub fn part_size_for(size: u64, preferred: u64) -> Option<u64> {
    let part = preferred.clamp(MIN_PART_BYTES, MAX_PART_BYTES);
    if size.div_ceil(part) <= MAX_PARTS {
        return Some(part);
    }
    let mib = 1 << 20;
    let needed = size.div_ceil(MAX_PARTS).div_ceil(mib) * mib;
    (needed <= MAX_PART_BYTES).then_some(needed)
}

/// `s3://bucket/prefix`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// The key prefix, without a leading or trailing `/` (empty: the bucket's root).
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://bucket[/prefix]`: a bucket name as S3 names them (3 to 63 lowercase letters,
    /// digits, `.` and `-`) and a prefix without `:` (which ends the location in
    /// `oci:s3://bucket/prefix:REF`), empty, `.` or `..` segments.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{text:?} is not s3://BUCKET[/PREFIX]"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !bucket_ok {
            return Err(format!(
                "{text:?}: {bucket:?} is not an S3 bucket name (3 to 63 lowercase letters, \
                 digits, '.' and '-')"
            ));
        }
        if !prefix.is_empty() {
            let bad_segment = prefix
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..");
            let bad_char = prefix.chars().any(|c| c == ':' || c.is_control());
            if bad_segment || bad_char || prefix.len() > 512 {
                return Err(format!(
                    "{text:?}: the prefix {prefix:?} must be '/'-separated names without ':', \
                     control characters, empty, '.' or '..' segments"
                ));
            }
        }
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// The key of a file of the layout.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// How an S3 layout is reached and written.
#[derive(Debug, Clone, Default)]
pub struct S3LayoutOptions {
    /// Send every request with `ExpectedBucketOwner` (a bucket of the same name in another
    /// account answers `AccessDenied` instead of receiving or serving the layout).
    pub expected_owner: Option<String>,
    /// Encrypt every object written with SSE-KMS under this key.
    pub kms_key: Option<KmsKeyArn>,
    /// Part size of multipart uploads (default [`DEFAULT_PART_BYTES`]).
    pub part_bytes: Option<u64>,
    /// Largest blob moved from its staging object with one `CopyObject`, and the part size of
    /// the multipart copy of a larger one (default [`DEFAULT_COPY_PART_BYTES`]; clamped to S3's
    /// 5 MiB..5 GiB parts).
    pub copy_part_bytes: Option<u64>,
}

/// An OCI image layout under an S3 prefix.
#[derive(Clone)]
pub struct S3Layout {
    client: aws_sdk_s3::Client,
    location: S3Location,
    options: S3LayoutOptions,
}

impl std::fmt::Debug for S3Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Layout")
            .field("location", &self.location)
            .field("options", &self.options)
            .finish()
    }
}

/// Aborts a multipart upload when dropped armed: the write failed, or was cancelled (another
/// blob of the export failed). Best effort (the process may end first); the lifecycle rule is
/// the backstop.
struct AbortGuard {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    upload_id: String,
    owner: Option<String>,
    armed: bool,
}

impl AbortGuard {
    async fn abort(mut self) {
        self.armed = false;
        let _ = self.request().send().await;
    }

    fn request(
        &self,
    ) -> aws_sdk_s3::operation::abort_multipart_upload::builders::AbortMultipartUploadFluentBuilder
    {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .set_expected_bucket_owner(self.owner.clone())
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let request = self.request();
            handle.spawn(async move {
                let _ = request.send().await;
            });
        }
    }
}

impl S3Layout {
    /// The layout at `location`, reached in `region` under the process's own identity. With an
    /// endpoint override (moto, LocalStack) requests are path-style.
    pub async fn new(
        settings: &AwsSettings,
        region: &str,
        location: S3Location,
        options: S3LayoutOptions,
    ) -> Self {
        let config = sdk_config(settings, region, None).await;
        let s3 = aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(settings.endpoint_url.is_some())
            .build();
        S3Layout {
            client: aws_sdk_s3::Client::from_conf(s3),
            location,
            options,
        }
    }

    /// Where the layout is.
    pub fn s3_location(&self) -> &S3Location {
        &self.location
    }

    fn blob_key(&self, digest: &Digest) -> String {
        self.location.key(&format!("blobs/sha256/{}", digest.hex()))
    }

    fn shown(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.location.bucket)
    }

    fn owner(&self) -> Option<String> {
        self.options.expected_owner.clone()
    }

    async fn head(&self, key: &str) -> oci::Result<Option<u64>> {
        Ok(self
            .head_object(key, false)
            .await?
            .map(|head| head.content_length().unwrap_or(0).max(0) as u64))
    }

    /// `HeadObject`, with the object's checksums when `checksums` (`ChecksumMode`, which for an
    /// SSE-KMS object also asks `kms:Decrypt`): `None` when there is no such key.
    async fn head_object(
        &self,
        key: &str,
        checksums: bool,
    ) -> oci::Result<Option<aws_sdk_s3::operation::head_object::HeadObjectOutput>> {
        let answer = self
            .client
            .head_object()
            .bucket(&self.location.bucket)
            .key(key)
            .set_checksum_mode(checksums.then_some(aws_sdk_s3::types::ChecksumMode::Enabled))
            .set_expected_bucket_owner(self.owner())
            .send()
            .await;
        match answer {
            Ok(head) => Ok(Some(head)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) if crate::store::forbidden(&e) && self.denied_but_absent(key).await => Ok(None),
            Err(e) => Err(s3_error("s3:HeadObject", &self.shown(key), &e)),
        }
    }

    /// A 403 for `key` that meant only that it is missing (`store::denied_but_absent`).
    async fn denied_but_absent(&self, key: &str) -> bool {
        crate::store::denied_but_absent(&self.client, &self.location.bucket, key, self.owner())
            .await
    }

    /// `GetObject`: `None` when there is no such key, else its length and body.
    async fn get(&self, key: &str) -> oci::Result<Option<(u64, ByteStream)>> {
        self.get_range(key, None).await
    }

    /// `GetObject`, of the bytes `range` names (`bytes=START-[END]`) when given.
    async fn get_range(
        &self,
        key: &str,
        range: Option<String>,
    ) -> oci::Result<Option<(u64, ByteStream)>> {
        let answer = self
            .client
            .get_object()
            .bucket(&self.location.bucket)
            .key(key)
            .set_range(range)
            .set_expected_bucket_owner(self.owner())
            .send()
            .await;
        match answer {
            Ok(object) => Ok(Some((
                object.content_length().unwrap_or(0).max(0) as u64,
                object.body,
            ))),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) if crate::store::forbidden(&e) && self.denied_but_absent(key).await => Ok(None),
            Err(e) => Err(s3_error("s3:GetObject", &self.shown(key), &e)),
        }
    }

    /// One `PutObject` of bytes already checked.
    async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> oci::Result<()> {
        self.put_if(key, bytes, content_type, None)
            .await
            .map(|_| ())
    }

    /// `PutObject`, only if the object is as `condition` says, when given (S3's conditional
    /// writes, `If-None-Match: *` and `If-Match: ETAG`: "Add preconditions to S3 operations with
    /// conditional requests", Amazon S3 User Guide: 412 Precondition Failed when it is not, 409
    /// ConditionalRequestConflict when another conditional write of the key raced it): `false`
    /// then, nothing written.
    async fn put_if(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: &str,
        condition: Option<crate::store::WriteIf<'_>>,
    ) -> oci::Result<bool> {
        let kms = self.options.kms_key.as_ref();
        let request = self
            .client
            .put_object()
            .bucket(&self.location.bucket)
            .key(key)
            .content_type(content_type)
            .content_length(bytes.len() as i64)
            .body(ByteStream::from(bytes))
            .set_expected_bucket_owner(self.owner())
            .set_server_side_encryption(kms.map(|_| ServerSideEncryption::AwsKms))
            .set_ssekms_key_id(kms.map(|k| k.arn.clone()));
        let request = match condition {
            None => request,
            Some(crate::store::WriteIf::Absent) => request.if_none_match("*"),
            Some(crate::store::WriteIf::Unchanged(etag)) => request.if_match(etag),
        };
        match request.send().await {
            Ok(_) => Ok(true),
            // Only a write that sent a condition can fail it.
            Err(e) if condition.is_some() && crate::store::condition_failed(&e) => Ok(false),
            Err(e) => Err(s3_error("s3:PutObject", &self.shown(key), &e)),
        }
    }

    /// Opens a multipart upload of `key`: every part's CRC32 (computed by the SDK) is named as
    /// the upload's kind, so the completion lists each one (S3 refuses parts whose checksum type
    /// differs from the upload's: "Checksum Type mismatch"); SSE-KMS under the entry's key.
    async fn create_upload(&self, key: &str) -> oci::Result<String> {
        let kms = self.options.kms_key.as_ref();
        let shown = self.shown(key);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.location.bucket)
            .key(key)
            .content_type("application/octet-stream")
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .set_expected_bucket_owner(self.owner())
            .set_server_side_encryption(kms.map(|_| ServerSideEncryption::AwsKms))
            .set_ssekms_key_id(kms.map(|k| k.arn.clone()))
            .send()
            .await
            .map_err(|e| s3_error("s3:CreateMultipartUpload", &shown, &e))?;
        created
            .upload_id()
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .ok_or_else(|| layout_error(&shown, "s3:CreateMultipartUpload answered no UploadId"))
    }

    /// Completes a multipart upload of `key` with `parts`, every part's number and ETag in
    /// ascending order
    /// (<https://docs.aws.amazon.com/AmazonS3/latest/API/API_CompleteMultipartUpload.html>).
    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> oci::Result<()> {
        self.client
            .complete_multipart_upload()
            .bucket(&self.location.bucket)
            .key(key)
            .upload_id(upload_id)
            .set_expected_bucket_owner(self.owner())
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| s3_error("s3:CompleteMultipartUpload", &self.shown(key), &e))?;
        Ok(())
    }

    /// Completes the upload `guard` holds, or aborts it when completing fails.
    async fn complete_guarded(
        &self,
        mut guard: AbortGuard,
        parts: Vec<CompletedPart>,
    ) -> oci::Result<()> {
        match self
            .complete_upload(&guard.key, &guard.upload_id, parts)
            .await
        {
            Ok(()) => {
                guard.armed = false;
                Ok(())
            }
            Err(e) => {
                guard.abort().await;
                Err(e)
            }
        }
    }

    /// Aborts the upload `upload_id` of `key` when dropped armed.
    fn guard(&self, key: &str, upload_id: &str) -> AbortGuard {
        AbortGuard {
            client: self.client.clone(),
            bucket: self.location.bucket.clone(),
            key: key.to_string(),
            upload_id: upload_id.to_string(),
            owner: self.owner(),
            armed: true,
        }
    }

    async fn store_blob(&self, blob: &BlobRef, mut body: BlobStream) -> oci::Result<()> {
        let key = self.blob_key(&blob.digest);
        let shown = self.shown(&key);
        let preferred = self.options.part_bytes.unwrap_or(DEFAULT_PART_BYTES);
        let part = part_size_for(blob.size, preferred).ok_or_else(|| {
            layout_error(
                &shown,
                format!(
                    "a blob of {} bytes is over S3's largest multipart upload \
                     ({MAX_PARTS} parts of {MAX_PART_BYTES} bytes)",
                    blob.size
                ),
            )
        })?;
        let receive = |e: std::io::Error| layout_error(&shown, format!("receiving the blob: {e}"));
        if blob.size <= part {
            let mut verifier = Verifier::new();
            let mut bytes = BytesMut::with_capacity(blob.size as usize);
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(receive)?;
                verifier.update(&chunk);
                if verifier.seen() > blob.size {
                    break;
                }
                bytes.extend_from_slice(&chunk);
            }
            verifier.check(&blob.digest, blob.size, &shown)?;
            return self
                .put(&key, bytes.freeze(), "application/octet-stream")
                .await;
        }
        self.store_multipart(blob, body, &key, part).await
    }

    /// A blob over one part: parts streamed in order, the upload completed only when the whole
    /// blob matched its digest and size.
    async fn store_multipart(
        &self,
        blob: &BlobRef,
        mut body: BlobStream,
        key: &str,
        part: u64,
    ) -> oci::Result<()> {
        let shown = self.shown(key);
        let upload_id = self.create_upload(key).await?;
        let guard = self.guard(key, &upload_id);
        let mut verifier = Verifier::new();
        let mut buffer = BytesMut::with_capacity(part as usize);
        let mut parts = Vec::new();
        let mut ended = false;
        loop {
            while !ended && (buffer.len() as u64) < part && verifier.seen() <= blob.size {
                match body.next().await {
                    Some(Ok(chunk)) => {
                        verifier.update(&chunk);
                        buffer.extend_from_slice(&chunk);
                    }
                    Some(Err(e)) => {
                        guard.abort().await;
                        return Err(layout_error(&shown, format!("receiving the blob: {e}")));
                    }
                    None => ended = true,
                }
            }
            // Too many bytes, or too few at the end: the check below refuses the blob, and its
            // last part is never sent.
            let wrong_size = verifier.seen() > blob.size || (ended && verifier.seen() != blob.size);
            if wrong_size || buffer.is_empty() {
                break;
            }
            let bytes = buffer.split_to(buffer.len().min(part as usize)).freeze();
            // Part numbers run from 1 to 10,000 and every part but the last is `part` bytes
            // (at least 5 MiB): `part_size_for` keeps the blob within 10,000 of them.
            let number = parts.len() as i32 + 1;
            match self.upload_part(key, &upload_id, number, bytes).await {
                Ok((etag, crc32)) => parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .e_tag(etag)
                        .set_checksum_crc32(crc32)
                        .build(),
                ),
                Err(e) => {
                    guard.abort().await;
                    return Err(e);
                }
            }
        }
        if let Err(e) = verifier.check(&blob.digest, blob.size, &shown) {
            guard.abort().await;
            return Err(e);
        }
        self.complete_guarded(guard, parts).await
    }

    /// Uploads one part; its ETag and CRC32.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        bytes: Bytes,
    ) -> oci::Result<(String, Option<String>)> {
        let shown = self.shown(key);
        let answer = self
            .client
            .upload_part()
            .bucket(&self.location.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .content_length(bytes.len() as i64)
            .body(ByteStream::from(bytes))
            .set_expected_bucket_owner(self.owner())
            .send()
            .await
            .map_err(|e| s3_error("s3:UploadPart", &shown, &e))?;
        let etag = answer.e_tag().map(str::to_string).ok_or_else(|| {
            layout_error(
                &shown,
                format!("s3:UploadPart of part {number} answered no ETag"),
            )
        })?;
        Ok((etag, answer.checksum_crc32().map(str::to_string)))
    }

    async fn open(&self, digest: &Digest, start: u64, end: Option<u64>) -> oci::Result<BlobStream> {
        let key = self.blob_key(digest);
        let range = (start > 0 || end.is_some()).then(|| {
            format!(
                "bytes={start}-{}",
                end.map(|e| e.to_string()).unwrap_or_default()
            )
        });
        let Some((_, body)) = self.get_range(&key, range).await? else {
            return Err(layout_error(
                self.shown(&key),
                "no such object: the layout is incomplete, export it again",
            ));
        };
        let stream = futures::stream::unfold(body, |mut body| async move {
            body.next()
                .await
                .map(|chunk| (chunk.map_err(std::io::Error::other), body))
        });
        Ok(stream.boxed())
    }

    async fn read_small(&self, name: &str, limit: usize) -> oci::Result<Option<Bytes>> {
        let key = self.location.key(name);
        let shown = self.shown(&key);
        let Some((length, mut body)) = self.get(&key).await? else {
            return Ok(None);
        };
        let over = || {
            layout_error(
                &shown,
                format!("is over {limit} bytes: refused (not a layout this tool wrote?)"),
            )
        };
        if length > limit as u64 {
            return Err(over());
        }
        let mut bytes = BytesMut::with_capacity(length as usize);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| layout_error(&shown, format!("cannot read: {e}")))?;
            bytes.extend_from_slice(&chunk);
            if bytes.len() > limit {
                return Err(over());
            }
        }
        Ok(Some(bytes.freeze()))
    }
}

/// Largest object one `CopyObject` copies, and the part size of a multipart copy of a larger
/// one ("Copy an object", <https://docs.aws.amazon.com/AmazonS3/latest/userguide/copy-object.html>:
/// "you can create a copy of your object up to 5 GB in a single atomic action ... to copy an
/// object greater than 5 GB, you must use the multipart upload Upload Part - Copy
/// (UploadPartCopy) API"; a part is at most 5 GiB). Both are server side: no byte passes
/// through the function.
pub const DEFAULT_COPY_PART_BYTES: u64 = 5 * 1000 * 1000 * 1000;

/// A sha256 digest as S3 writes a SHA-256 checksum: the 32 bytes in base64.
fn sha256_base64(digest: &Digest) -> String {
    hex::decode(digest.hex())
        .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes))
        .unwrap_or_default()
}

/// `bucket/key` as `x-amz-copy-source` takes it: URL-encoded, `/` kept.
fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = format!("{bucket}/");
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A part S3 holds of an upload, as `CompleteMultipartUpload` names it.
struct HeldPart {
    size: u64,
    completed: CompletedPart,
}

/// Parts of one resumable upload: the workflow's copy steps send a blob in ranges, one Lambda
/// invocation each, into a staging object, and move it to `blobs/sha256/<hex>` once its hash
/// (computed by the caller as the parts went by) matched.
impl S3Layout {
    fn staging_key(&self, upload: &PartUpload) -> oci::Result<String> {
        upload
            .check()
            .map_err(|reason| layout_error(self.location.to_string(), reason))?;
        Ok(self.location.key(&upload.staging))
    }

    async fn begin(&self, staging: &str) -> oci::Result<String> {
        let key = self.staging_key(&PartUpload {
            staging: staging.to_string(),
            upload_id: "-".into(),
        })?;
        self.create_upload(&key).await
    }

    /// Every part S3 holds of an upload, page by page (`ListParts` answers at most 1,000).
    async fn held_parts(&self, upload: &PartUpload) -> oci::Result<Vec<HeldPart>> {
        let key = self.staging_key(upload)?;
        let mut parts = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_parts()
                .bucket(&self.location.bucket)
                .key(&key)
                .upload_id(&upload.upload_id)
                .set_part_number_marker(marker.take())
                .set_expected_bucket_owner(self.owner())
                .send()
                .await
                .map_err(|e| s3_error("s3:ListMultipartUploadParts", &self.shown(&key), &e))?;
            for part in page.parts() {
                parts.push(HeldPart {
                    size: part.size().unwrap_or(0).max(0) as u64,
                    completed: CompletedPart::builder()
                        .set_part_number(part.part_number())
                        .set_e_tag(part.e_tag().map(str::to_string))
                        .set_checksum_crc32(part.checksum_crc32().map(str::to_string))
                        .build(),
                });
            }
            match (page.is_truncated(), page.next_part_number_marker()) {
                (Some(true), Some(next)) if parts.len() <= MAX_PARTS as usize => {
                    marker = Some(next.to_string())
                }
                _ => break,
            }
        }
        parts.sort_by_key(|p| p.completed.part_number());
        let numbered_in_order = parts
            .iter()
            .enumerate()
            .all(|(i, p)| p.completed.part_number() == Some(i as i32 + 1));
        if !numbered_in_order {
            return Err(layout_error(
                self.shown(&key),
                "the upload's parts are not numbered 1, 2, 3, ... without a gap",
            ));
        }
        Ok(parts)
    }

    async fn finish(&self, upload: &PartUpload, blob: &BlobRef) -> oci::Result<()> {
        let staging = self.staging_key(upload)?;
        let target = self.blob_key(&blob.digest);
        let parts = self.held_parts(upload).await?;
        let held: u64 = parts.iter().map(|p| p.size).sum();
        if held != blob.size {
            return Err(oci::Error::SizeMismatch {
                url: self.shown(&staging),
                expected: blob.size,
                actual: held,
            });
        }
        if parts.is_empty() {
            // S3 completes no upload of zero parts: the empty blob is written as it is.
            if blob.digest != Digest::of(b"") {
                return Err(oci::Error::DigestMismatch {
                    url: self.shown(&staging),
                    expected: blob.digest.to_string(),
                    actual: Digest::of(b"").to_string(),
                });
            }
            self.abort(upload).await?;
            return self
                .put(&target, Bytes::new(), "application/octet-stream")
                .await;
        }
        let parts = parts.into_iter().map(|p| p.completed).collect();
        self.complete_upload(&staging, &upload.upload_id, parts)
            .await?;
        // The staging object's bytes are checked by S3 (or read back) against the digest
        // before they are copied to the blob's place; it goes either way (the next try uploads
        // again).
        let moved = match self.verify_staged(&staging, blob).await {
            Ok(()) => self.copy(&staging, &target, blob.size).await,
            Err(e) => Err(e),
        };
        let removed = self
            .client
            .delete_object()
            .bucket(&self.location.bucket)
            .key(&staging)
            .set_expected_bucket_owner(self.owner())
            .send()
            .await
            .map_err(|e| s3_error("s3:DeleteObject", &self.shown(&staging), &e));
        moved.and(removed.map(|_| ()))
    }

    /// Checks a completed staging object is `blob`, whatever the caller's hash said (its state
    /// travelled through the workflow): up to the copy part size, S3 computes the object's own
    /// SHA-256 by copying it onto itself (`CopyObject` with `ChecksumAlgorithm: SHA256`, "the
    /// algorithm that you want Amazon S3 to use to create the checksum for the object"); above
    /// it, the object is read back and hashed, streamed.
    async fn verify_staged(&self, staging: &str, blob: &BlobRef) -> oci::Result<()> {
        let shown = self.shown(staging);
        if blob.size > self.copy_part_bytes() {
            let (_, body) = self
                .get(staging)
                .await?
                .ok_or_else(|| layout_error(&shown, "the completed upload is not there"))?;
            let mut reader = body.into_async_read();
            let mut verifier = Verifier::new();
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                let read = tokio::io::AsyncReadExt::read(&mut reader, &mut buffer)
                    .await
                    .map_err(|e| layout_error(&shown, format!("reading it back: {e}")))?;
                if read == 0 {
                    break;
                }
                verifier.update(&buffer[..read]);
                if verifier.seen() > blob.size {
                    break;
                }
            }
            return verifier.check(&blob.digest, blob.size, &shown);
        }
        let copied = self.copy_object(staging, staging).await?;
        let computed = match copied {
            Some(sum) => Some(sum),
            None => self
                .head_object(staging, true)
                .await?
                .and_then(|head| head.checksum_sha256().map(str::to_string)),
        };
        let expected = sha256_base64(&blob.digest);
        match computed {
            Some(sum) if sum == expected => Ok(()),
            Some(sum) => Err(oci::Error::DigestMismatch {
                url: shown,
                expected: blob.digest.to_string(),
                actual: format!("an object whose SHA-256 (base64) is {sum}"),
            }),
            None => Err(layout_error(
                &shown,
                "S3 gave no SHA-256 of the completed upload: it cannot be checked",
            )),
        }
    }

    fn copy_part_bytes(&self) -> u64 {
        self.options
            .copy_part_bytes
            .unwrap_or(DEFAULT_COPY_PART_BYTES)
            .clamp(MIN_PART_BYTES, MAX_PART_BYTES)
    }

    /// One `CopyObject` of `from` to `to` (itself, to have S3 hash it): S3 computes the copy's
    /// SHA-256 as its checksum ("CopyObject", ChecksumAlgorithm: "the algorithm that you want
    /// Amazon S3 to use to create the checksum for the object"), which every later GetObject is
    /// checked against (a staging object's first checksum is a composite of its parts'). The
    /// SHA-256 (base64) when S3's answer names it.
    async fn copy_object(&self, from: &str, to: &str) -> oci::Result<Option<String>> {
        let kms = self.options.kms_key.as_ref();
        let copied = self
            .client
            .copy_object()
            .bucket(&self.location.bucket)
            .key(to)
            .copy_source(copy_source(&self.location.bucket, from))
            .content_type("application/octet-stream")
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .set_expected_bucket_owner(self.owner())
            .set_expected_source_bucket_owner(self.owner())
            .set_server_side_encryption(kms.map(|_| ServerSideEncryption::AwsKms))
            .set_ssekms_key_id(kms.map(|k| k.arn.clone()))
            .send()
            .await
            .map_err(|e| s3_error("s3:CopyObject", &self.shown(to), &e))?;
        Ok(copied
            .copy_object_result()
            .and_then(|r| r.checksum_sha256())
            .map(str::to_string))
    }

    /// Copies `from` to `to` inside the bucket, server side: one `CopyObject` up to the copy
    /// part size (5 GB), a multipart copy in parts of that size above.
    async fn copy(&self, from: &str, to: &str, size: u64) -> oci::Result<()> {
        let source = copy_source(&self.location.bucket, from);
        let shown = self.shown(to);
        let copy_part = self.copy_part_bytes();
        if size <= copy_part {
            return self.copy_object(from, to).await.map(|_| ());
        }
        let upload_id = self.create_upload(to).await?;
        let guard = self.guard(to, &upload_id);
        let mut parts = Vec::new();
        let mut start = 0;
        while start < size {
            let end = (start + copy_part).min(size) - 1;
            let number = parts.len() as i32 + 1;
            let copied = self
                .client
                .upload_part_copy()
                .bucket(&self.location.bucket)
                .key(to)
                .upload_id(&upload_id)
                .part_number(number)
                .copy_source(&source)
                .copy_source_range(format!("bytes={start}-{end}"))
                .set_expected_bucket_owner(self.owner())
                .set_expected_source_bucket_owner(self.owner())
                .send()
                .await
                .map_err(|e| s3_error("s3:UploadPartCopy", &shown, &e));
            let copied = match copied {
                Ok(copied) => copied,
                Err(e) => {
                    guard.abort().await;
                    return Err(e);
                }
            };
            let result = copied.copy_part_result();
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(result.and_then(|r| r.e_tag()).map(str::to_string))
                    .set_checksum_crc32(result.and_then(|r| r.checksum_crc32()).map(str::to_string))
                    .build(),
            );
            start = end + 1;
        }
        self.complete_guarded(guard, parts).await
    }

    async fn abort(&self, upload: &PartUpload) -> oci::Result<()> {
        let key = self.staging_key(upload)?;
        let answer = self
            .client
            .abort_multipart_upload()
            .bucket(&self.location.bucket)
            .key(&key)
            .upload_id(&upload.upload_id)
            .set_expected_bucket_owner(self.owner())
            .send()
            .await;
        match answer {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_upload()) => Ok(()),
            Err(e) => Err(s3_error("s3:AbortMultipartUpload", &self.shown(&key), &e)),
        }
    }
}

impl PartUploads for S3Layout {
    fn begin_upload<'a>(&'a self, staging: &'a str) -> BoxFuture<'a, oci::Result<String>> {
        self.begin(staging).boxed()
    }

    fn put_part<'a>(
        &'a self,
        upload: &'a PartUpload,
        number: u32,
        bytes: Bytes,
    ) -> BoxFuture<'a, oci::Result<()>> {
        async move {
            let key = self.staging_key(upload)?;
            if !(1..=MAX_PARTS as u32).contains(&number) {
                return Err(layout_error(
                    self.shown(&key),
                    format!("part {number} is past S3's {MAX_PARTS} parts of one upload"),
                ));
            }
            self.upload_part(&key, &upload.upload_id, number as i32, bytes)
                .await
                .map(|_| ())
        }
        .boxed()
    }

    fn stored_parts<'a>(&'a self, upload: &'a PartUpload) -> BoxFuture<'a, oci::Result<Vec<u64>>> {
        async move {
            let parts = self.held_parts(upload).await?;
            Ok(parts.iter().map(|p| p.size).collect())
        }
        .boxed()
    }

    fn finish_upload<'a>(
        &'a self,
        upload: &'a PartUpload,
        blob: &'a BlobRef,
    ) -> BoxFuture<'a, oci::Result<()>> {
        self.finish(upload, blob).boxed()
    }

    fn abort_upload<'a>(&'a self, upload: &'a PartUpload) -> BoxFuture<'a, oci::Result<()>> {
        self.abort(upload).boxed()
    }
}

impl LayoutStore for S3Layout {
    fn location(&self) -> String {
        self.location.to_string()
    }

    fn blob_location(&self, digest: &Digest) -> String {
        self.shown(&self.blob_key(digest))
    }

    fn blob_size<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, oci::Result<Option<u64>>> {
        async move { self.head(&self.blob_key(digest)).await }.boxed()
    }

    /// The object's full-object SHA-256 checksum is the digest: S3 computed it (the workflow's
    /// export copies every blob with `ChecksumAlgorithm: SHA256`) or refused an upload whose
    /// bytes did not match it ("Checking object integrity in Amazon S3",
    /// <https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html>).
    /// A composite checksum of parts (`<base64>-<parts>`) vouches for nothing here.
    fn attests_blob<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, oci::Result<bool>> {
        async move {
            let head = self.head_object(&self.blob_key(digest), true).await?;
            Ok(head.is_some_and(|h| h.checksum_sha256() == Some(sha256_base64(digest).as_str())))
        }
        .boxed()
    }

    fn read_blob_range<'a>(
        &'a self,
        digest: &'a Digest,
        start: u64,
        end: Option<u64>,
    ) -> BoxFuture<'a, oci::Result<BlobStream>> {
        self.open(digest, start, end).boxed()
    }

    fn write_blob<'a>(
        &'a self,
        blob: &'a BlobRef,
        body: BlobStream,
    ) -> BoxFuture<'a, oci::Result<()>> {
        self.store_blob(blob, body).boxed()
    }

    fn read_file<'a>(
        &'a self,
        name: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, oci::Result<Option<Bytes>>> {
        self.read_small(name, limit).boxed()
    }

    /// One `PutObject`: S3 replaces an object at once, readers see the old or the new one.
    fn write_file<'a>(&'a self, name: &'a str, bytes: Bytes) -> BoxFuture<'a, oci::Result<()>> {
        self.replace_file_if(name, bytes, &FileVersion::Unversioned)
            .map(|written| written.map(|_| ()))
            .boxed()
    }

    /// The object's ETag (`HeadObject`), or absent.
    fn file_version<'a>(&'a self, name: &'a str) -> BoxFuture<'a, oci::Result<FileVersion>> {
        async move {
            let head = self.head_object(&self.location.key(name), false).await?;
            Ok(match head {
                None => FileVersion::Absent,
                Some(head) => match head.e_tag {
                    Some(etag) => FileVersion::Tagged(etag),
                    None => {
                        return Err(layout_error(
                            self.shown(&self.location.key(name)),
                            "S3 answered no ETag: cannot replace it only if unchanged",
                        ))
                    }
                },
            })
        }
        .boxed()
    }

    /// One `PutObject`, conditional on the version (`If-Match`, `If-None-Match: *`).
    fn replace_file_if<'a>(
        &'a self,
        name: &'a str,
        bytes: Bytes,
        version: &'a FileVersion,
    ) -> BoxFuture<'a, oci::Result<bool>> {
        async move {
            let key = self.location.key(name);
            let content_type = if name.ends_with(".json") || name == "oci-layout" {
                "application/json"
            } else {
                "application/octet-stream"
            };
            let condition = match version {
                FileVersion::Unversioned => None,
                FileVersion::Absent => Some(crate::store::WriteIf::Absent),
                FileVersion::Tagged(etag) => Some(crate::store::WriteIf::Unchanged(etag)),
            };
            self.put_if(&key, bytes, content_type, condition).await
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_stay_within_s3_limits() {
        assert_eq!(
            part_size_for(1, DEFAULT_PART_BYTES),
            Some(DEFAULT_PART_BYTES)
        );
        assert_eq!(part_size_for(100 << 20, 1), Some(MIN_PART_BYTES));
        let big = 200u64 << 30; // 200 GiB: 25,600 parts of 8 MiB
        let part = part_size_for(big, DEFAULT_PART_BYTES).unwrap();
        assert!(
            big.div_ceil(part) <= MAX_PARTS && part % (1 << 20) == 0,
            "{part}"
        );
        assert_eq!(
            part_size_for(MAX_PARTS * MAX_PART_BYTES + 1, DEFAULT_PART_BYTES),
            None
        );
    }

    #[test]
    fn locations_are_a_bucket_and_a_prefix_without_colons() {
        let at = S3Location::parse("s3://air-gap/exports/2026/").unwrap();
        assert_eq!(at.bucket, "air-gap");
        assert_eq!(at.key("index.json"), "exports/2026/index.json");
        assert_eq!(at.to_string(), "s3://air-gap/exports/2026");
        assert_eq!(
            S3Location::parse("s3://air-gap").unwrap().key("oci-layout"),
            "oci-layout"
        );
        for bad in [
            "s3://A/x",
            "s3://ab",
            "s3://b/x//y",
            "s3://bk/../x",
            "s3://bk/a:b",
            "/tmp/x",
        ] {
            assert!(S3Location::parse(bad).is_err(), "{bad}");
        }
    }
}
