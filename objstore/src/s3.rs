//! The S3 backend (aws-sdk-s3), for S3 and S3-compatible stores (MinIO, R2, SeaweedFS, ...).
//!
//! The client is built by hand — explicit endpoint, region, static credentials, optional
//! path-style — never from the default credential chain, which probes a cloud metadata address.
//! It runs on a two-thread tokio runtime owned by the store.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::future::BoxFuture;

use crate::{
    on_runtime, runtime, Condition, ObjectMeta, ObjectStore, Part, StoreError, StoreResult,
};

#[derive(Debug, Clone)]
pub struct S3Config {
    /// e.g. `http://127.0.0.1:8333`; None: AWS's endpoint for the region.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Prepended to every key (`""` or ending in `/`).
    pub prefix: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub path_style: bool,
}

pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: Arc<str>,
    prefix: Arc<str>,
    rt: Option<tokio::runtime::Runtime>,
}

impl S3Store {
    pub fn new(config: &S3Config) -> StoreResult<S3Store> {
        let credentials = Credentials::new(
            &config.access_key_id,
            &config.secret_access_key,
            None,
            None,
            "ringtail",
        );
        let mut builder = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(config.path_style)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .build(),
            );
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let prefix = config.prefix.trim_start_matches('/');
        if !prefix.is_empty() && !prefix.ends_with('/') {
            return Err(StoreError::Fatal(format!(
                "S3 prefix {prefix:?} must be empty or end with '/'"
            )));
        }
        Ok(S3Store {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            bucket: config.bucket.as_str().into(),
            prefix: prefix.into(),
            rt: Some(runtime("ringtail-s3", 2).map_err(|e| StoreError::Fatal(e.to_string()))?),
        })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.rt
            .as_ref()
            .expect("runtime lives as long as the store")
            .handle()
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Creates the bucket if it does not exist (tests, first start against a fresh store).
    pub fn ensure_bucket(&self) -> BoxFuture<'static, StoreResult<()>> {
        let (client, bucket) = (self.client.clone(), self.bucket.clone());
        on_runtime(self.handle(), async move {
            match client.head_bucket().bucket(&*bucket).send().await {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_response().map(|r| r.status().as_u16()) != Some(404) => {
                    return Err(map_err(&bucket, e))
                }
                Err(_) => {}
            }
            match client.create_bucket().bucket(&*bucket).send().await {
                Ok(_) => Ok(()),
                Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(409) => Ok(()),
                Err(e) => Err(map_err(&bucket, e)),
            }
        })
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Maps an SDK error to what the caller can act on.
fn map_err<E, R>(key: &str, e: SdkError<E, R>) -> StoreError
where
    SdkError<E, R>: std::error::Error + 'static,
    R: HttpStatus,
{
    let status = e.raw_response().map(|r| r.status_code());
    let text = format!("{key}: {}", DisplayErrorContext(&e));
    match status {
        Some(404) => StoreError::NotFound(key.to_string()),
        Some(412) => StoreError::PreconditionFailed(key.to_string()),
        // 409: a concurrent conditional write won.
        Some(409) => StoreError::PreconditionFailed(key.to_string()),
        Some(429) | Some(503) => StoreError::Throttled(text),
        Some(s) if s >= 500 => StoreError::Transient(text),
        Some(_) => StoreError::Fatal(text),
        // No response: connect failure, timeout, dispatch error.
        None => StoreError::Transient(text),
    }
}

/// The status code of a raw HTTP response.
trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

impl ObjectStore for S3Store {
    fn put(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
    ) -> BoxFuture<'static, StoreResult<String>> {
        let (client, bucket, key) = (self.client.clone(), self.bucket.clone(), self.key(key));
        on_runtime(self.handle(), async move {
            let mut req = client
                .put_object()
                .bucket(&*bucket)
                .key(&key)
                .body(ByteStream::from(body));
            req = match condition {
                Condition::None => req,
                Condition::IfNoneMatch => req.if_none_match("*"),
                Condition::IfMatch(etag) => req.if_match(etag),
            };
            let out = req.send().await.map_err(|e| map_err(&key, e))?;
            Ok(out.e_tag.unwrap_or_default())
        })
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> BoxFuture<'static, StoreResult<Bytes>> {
        let (client, bucket, key) = (self.client.clone(), self.bucket.clone(), self.key(key));
        on_runtime(self.handle(), async move {
            let mut req = client.get_object().bucket(&*bucket).key(&key);
            if let Some(r) = &range {
                if r.start >= r.end {
                    return Err(StoreError::Fatal(format!("empty range {r:?} of {key:?}")));
                }
                req = req.range(format!("bytes={}-{}", r.start, r.end - 1));
            }
            let out = req.send().await.map_err(|e| map_err(&key, e))?;
            let body = out
                .body
                .collect()
                .await
                .map_err(|e| StoreError::Transient(format!("{key}: reading body: {e}")))?;
            Ok(body.into_bytes())
        })
    }

    fn head(&self, key: &str) -> BoxFuture<'static, StoreResult<ObjectMeta>> {
        let (client, bucket, full) = (self.client.clone(), self.bucket.clone(), self.key(key));
        let key = key.to_string();
        on_runtime(self.handle(), async move {
            let out = client
                .head_object()
                .bucket(&*bucket)
                .key(&full)
                .send()
                .await
                .map_err(|e| map_err(&full, e))?;
            Ok(ObjectMeta {
                key,
                size: out.content_length.unwrap_or(0) as u64,
                etag: out.e_tag.unwrap_or_default(),
            })
        })
    }

    fn list(&self, prefix: &str) -> BoxFuture<'static, StoreResult<Vec<ObjectMeta>>> {
        let (client, bucket, own) = (
            self.client.clone(),
            self.bucket.clone(),
            self.prefix.clone(),
        );
        let full = self.key(prefix);
        on_runtime(self.handle(), async move {
            let mut out = Vec::new();
            let mut token = None;
            loop {
                let page = client
                    .list_objects_v2()
                    .bucket(&*bucket)
                    .prefix(&full)
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .map_err(|e| map_err(&full, e))?;
                for o in page.contents.unwrap_or_default() {
                    let key = o.key.unwrap_or_default();
                    out.push(ObjectMeta {
                        key: key.strip_prefix(&*own).unwrap_or(&key).to_string(),
                        size: o.size.unwrap_or(0) as u64,
                        etag: o.e_tag.unwrap_or_default(),
                    });
                }
                match page.next_continuation_token {
                    Some(t) if page.is_truncated == Some(true) => token = Some(t),
                    _ => break,
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
    }

    fn delete(&self, key: &str) -> BoxFuture<'static, StoreResult<()>> {
        let (client, bucket, key) = (self.client.clone(), self.bucket.clone(), self.key(key));
        on_runtime(self.handle(), async move {
            match client
                .delete_object()
                .bucket(&*bucket)
                .key(&key)
                .send()
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => match map_err(&key, e) {
                    StoreError::NotFound(_) => Ok(()),
                    other => Err(other),
                },
            }
        })
    }

    fn create_multipart(&self, key: &str) -> BoxFuture<'static, StoreResult<String>> {
        let (client, bucket, key) = (self.client.clone(), self.bucket.clone(), self.key(key));
        on_runtime(self.handle(), async move {
            let out = client
                .create_multipart_upload()
                .bucket(&*bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| map_err(&key, e))?;
            out.upload_id
                .ok_or_else(|| StoreError::Fatal(format!("{key}: no upload id")))
        })
    }

    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> BoxFuture<'static, StoreResult<Part>> {
        let (client, bucket, key, id) = (
            self.client.clone(),
            self.bucket.clone(),
            self.key(key),
            upload_id.to_string(),
        );
        on_runtime(self.handle(), async move {
            let out = client
                .upload_part()
                .bucket(&*bucket)
                .key(&key)
                .upload_id(id)
                .part_number(number)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| map_err(&key, e))?;
            Ok(Part {
                number,
                etag: out.e_tag.unwrap_or_default(),
            })
        })
    }

    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<Part>,
    ) -> BoxFuture<'static, StoreResult<String>> {
        let (client, bucket, key, id) = (
            self.client.clone(),
            self.bucket.clone(),
            self.key(key),
            upload_id.to_string(),
        );
        on_runtime(self.handle(), async move {
            let parts = parts
                .into_iter()
                .map(|p| {
                    CompletedPart::builder()
                        .part_number(p.number)
                        .e_tag(p.etag)
                        .build()
                })
                .collect();
            let out = client
                .complete_multipart_upload()
                .bucket(&*bucket)
                .key(&key)
                .upload_id(id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| map_err(&key, e))?;
            Ok(out.e_tag.unwrap_or_default())
        })
    }

    fn abort_multipart(&self, key: &str, upload_id: &str) -> BoxFuture<'static, StoreResult<()>> {
        let (client, bucket, key, id) = (
            self.client.clone(),
            self.bucket.clone(),
            self.key(key),
            upload_id.to_string(),
        );
        on_runtime(self.handle(), async move {
            client
                .abort_multipart_upload()
                .bucket(&*bucket)
                .key(&key)
                .upload_id(id)
                .send()
                .await
                .map_err(|e| map_err(&key, e))?;
            Ok(())
        })
    }
}
