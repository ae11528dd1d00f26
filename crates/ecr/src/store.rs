//! The run's work bucket: an S3 bucket where one step call leaves what a later call of the same
//! run reads instead of asking the registries again (a repository's selected images, listed
//! and resolved once per run). Objects are short-lived: the deployment expires them.

use aws_sdk_s3::primitives::ByteStream;

use crate::aws::{sdk_config, AwsSettings};
use crate::error::{Error, Result};

/// The condition of a [`WorkBucket::put_if`].
#[derive(Debug, Clone, Copy)]
pub enum WriteIf<'a> {
    /// No object has the key (`If-None-Match: *`).
    Absent,
    /// The object still has this ETag (`If-Match`).
    Unchanged(&'a str),
}

/// An S3 bucket in the workflow's account and region.
#[derive(Clone)]
pub struct WorkBucket {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl std::fmt::Debug for WorkBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkBucket")
            .field("bucket", &self.bucket)
            .finish()
    }
}

impl WorkBucket {
    /// A client for `bucket` in `region` under the process's own identity. With an endpoint
    /// override (moto, LocalStack) requests are path-style: such endpoints serve no bucket
    /// subdomains.
    pub async fn new(settings: &AwsSettings, region: &str, bucket: String) -> Self {
        let config = sdk_config(settings, region, None).await;
        let s3 = aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(settings.endpoint_url.is_some())
            .build();
        WorkBucket {
            client: aws_sdk_s3::Client::from_conf(s3),
            bucket,
        }
    }

    /// Stores `body` under `key` (JSON).
    pub async fn put(&self, key: &str, body: Vec<u8>) -> Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| Error::api("s3:PutObject", self.resource(key), &e))?;
        Ok(())
    }

    /// The object under `key`, or `None` when there is none (never written, or expired).
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_object(key, None).await?.map(|(bytes, _)| bytes))
    }

    /// `get`, only from a bucket `account` owns (S3's `ExpectedBucketOwner`): a bucket of the
    /// same name in another account (deleted and taken, or never ours) answers `AccessDenied`.
    pub async fn get_owned_by(&self, key: &str, account: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .get_object(key, Some(account))
            .await?
            .map(|(bytes, _)| bytes))
    }

    /// The object's bytes and ETag.
    async fn get_object(
        &self,
        key: &str,
        owner: Option<&str>,
    ) -> Result<Option<(Vec<u8>, String)>> {
        let answer = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_expected_bucket_owner(owner.map(str::to_string))
            .send()
            .await;
        let object = match answer {
            Ok(object) => object,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e)
                if forbidden(&e)
                    && denied_but_absent(
                        &self.client,
                        &self.bucket,
                        key,
                        owner.map(str::to_string),
                    )
                    .await =>
            {
                return Ok(None)
            }
            Err(e) => return Err(Error::api("s3:GetObject", self.resource(key), &e)),
        };
        let etag = object.e_tag().unwrap_or_default().to_string();
        let bytes = object.body.collect().await.map_err(|e| Error::Api {
            code: None,
            operation: "s3:GetObject",
            resource: self.resource(key),
            message: format!("reading the object's body: {e}"),
            retryable: true,
        })?;
        Ok(Some((bytes.into_bytes().to_vec(), etag)))
    }

    /// The keys under `prefix`, in order, page by page; an error past `limit`.
    pub async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| Error::api("s3:ListBucket", self.resource(prefix), &e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            if keys.len() > limit {
                return Err(Error::Api {
                    code: None,
                    operation: "s3:ListBucket",
                    resource: self.resource(prefix),
                    message: format!("over {limit} objects under the prefix"),
                    retryable: false,
                });
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => break,
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Deletes `key` (one already gone is no error).
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| Error::api("s3:DeleteObject", self.resource(key), &e))?;
        Ok(())
    }

    /// `get`, with the object's ETag, for a [`WorkBucket::put_if`] of what was read.
    pub async fn get_tagged(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        self.get_object(key, None).await
    }

    /// Stores `body` under `key` only as `condition` says (S3 conditional writes, "How to
    /// prevent object overwrites with conditional writes":
    /// <https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html>):
    /// `Ok(false)` when S3 refused the condition (412 Precondition Failed, or 409
    /// ConditionalRequestConflict from a concurrent conditional write), so the caller reads again.
    pub async fn put_if(&self, key: &str, body: Vec<u8>, condition: WriteIf<'_>) -> Result<bool> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body));
        let request = match condition {
            WriteIf::Absent => request.if_none_match("*"),
            WriteIf::Unchanged(etag) => request.if_match(etag),
        };
        match request.send().await {
            Ok(_) => Ok(true),
            Err(e) if condition_failed(&e) => Ok(false),
            Err(e) => Err(Error::api("s3:PutObject", self.resource(key), &e)),
        }
    }

    fn resource(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

/// Whether S3 refused a conditional `PutObject` for its condition: it did not hold (412
/// Precondition Failed), or another conditional write of the key raced it (409
/// ConditionalRequestConflict) ("Add preconditions to S3 operations with conditional requests",
/// Amazon S3 User Guide).
pub(crate) fn condition_failed(
    e: &aws_sdk_s3::error::SdkError<
        aws_sdk_s3::operation::put_object::PutObjectError,
        aws_sdk_s3::config::http::HttpResponse,
    >,
) -> bool {
    matches!(
        e.raw_response().map(|r| r.status().as_u16()),
        Some(412 | 409)
    )
}

/// Whether S3 answered a read of an object 403 Forbidden.
pub(crate) fn forbidden<E>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    e.raw_response().map(|r| r.status().as_u16()) == Some(403)
}

/// Whether a read of `key` answered 403 only because the key is missing. S3 answers a missing
/// key 404 to a caller that may list the bucket and 403 to one that may not ("HeadObject",
/// "GetObject", Permissions, Amazon S3 API Reference); whether a `ListBucket` grant limited by
/// `s3:prefix` (the deployment's) counts there is not written. A listing of exactly that key's
/// prefix, which such a grant allows, tells: absent when it lists no object of that key. Any
/// other answer keeps the 403 an error.
pub(crate) async fn denied_but_absent(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    owner: Option<String>,
) -> bool {
    let listed = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(key)
        .max_keys(1)
        .set_expected_bucket_owner(owner)
        .send()
        .await;
    match listed {
        Ok(listed) => !listed.contents().iter().any(|o| o.key() == Some(key)),
        Err(_) => false,
    }
}
