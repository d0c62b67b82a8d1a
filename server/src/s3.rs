//! An S3-compatible bucket as the [`Objects`] backend of the chunk store
//! (`--store s3://BUCKET/PREFIX`): endpoint and keys come from the standard variables
//! (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ALLOW_HTTP=true` for a plain-http endpoint).
//!
//! Writes are create-only (`If-None-Match: *`), so two servers putting one chunk never
//! overwrite each other, and S3 never shows half an object. The client is async: calls
//! run on the backend's own runtime and the caller's thread waits for them, whatever
//! thread it is.

use std::future::Future;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use hotate_engine::store::{ObjectError, Objects};
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// Object writes in flight at once in a group.
const PUTS_AT_ONCE: usize = 16;

/// A bucket and a prefix in it.
pub struct S3Objects {
    s3: std::sync::Arc<AmazonS3>,
    prefix: String,
    /// `s3://BUCKET/PREFIX`, as given.
    url: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for S3Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Objects").field("url", &self.url).finish()
    }
}

impl Drop for S3Objects {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl S3Objects {
    /// Opens `s3://BUCKET/PREFIX` with the settings of the `AWS_*` variables, and checks
    /// that the bucket answers.
    ///
    /// # Errors
    /// A URL of another kind, a missing bucket, bad credentials or an endpoint that does
    /// not answer, each said with what to check.
    pub fn open(url: &str) -> Result<Self, ObjectError> {
        Self::open_with(url, AmazonS3Builder::from_env())
    }

    /// As [`S3Objects::open`], with the settings of `builder` (tests name their server).
    ///
    /// # Errors
    /// As [`S3Objects::open`].
    pub fn open_with(url: &str, builder: AmazonS3Builder) -> Result<Self, ObjectError> {
        let Some((bucket, prefix)) = url
            .strip_prefix("s3://")
            .map(|rest| rest.split_once('/').unwrap_or((rest, "")))
            .filter(|(bucket, _)| !bucket.is_empty())
        else {
            return Err(ObjectError(format!(
                "--store {url:?} is not an S3 URL: use s3://BUCKET/PREFIX"
            )));
        };
        // One process-wide TLS provider (ring); a second install is refused, harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let s3 = builder
            .with_bucket_name(bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .build()
            .map_err(|e| ObjectError(format!("--store {url}: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("hotate-s3")
            .enable_all()
            .build()
            .map_err(|e| ObjectError(format!("starting the S3 client: {e}")))?;
        let objects = Self {
            s3: std::sync::Arc::new(s3),
            prefix: prefix.trim_matches('/').to_owned(),
            url: url.to_owned(),
            runtime: Some(runtime),
        };
        // A missing bucket or a refused key is told now, not at the first upload: a
        // listing says so (a HEAD of a missing object in a missing bucket is just 404).
        let (s3, path) = (objects.s3.clone(), objects.path("hotate"));
        objects
            .run(async move { s3.list_with_delimiter(Some(&path)).await })
            .map_err(|e| {
                ObjectError(format!(
                    "cannot use the bucket of --store {url} ({e}): check that the bucket \
                     exists and AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, \
                     AWS_REGION"
                ))
            })?;
        Ok(objects)
    }

    fn path(&self, key: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }

    /// Runs `work` on the backend's runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, object_store::Error>> + Send + 'static,
    ) -> Result<T, object_store::Error> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or(object_store::Error::NotImplemented {
                operation: "a call after shutdown".into(),
                implementer: "S3Objects".into(),
            })?;
        let (done, outcome) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = done.send(work.await);
        });
        outcome.recv().unwrap_or_else(|_| {
            Err(object_store::Error::Generic {
                store: "S3",
                source: "the S3 call was dropped".into(),
            })
        })
    }

    fn failed(&self, what: &str, key: &str, e: &object_store::Error) -> ObjectError {
        ObjectError(format!("S3 {what} of {} in {}: {e}", key, self.url))
    }
}

impl Objects for S3Objects {
    fn get(&self, key: &str) -> Result<Option<Bytes>, ObjectError> {
        let (s3, path) = (self.s3.clone(), self.path(key));
        match self.run(async move { s3.get(&path).await?.bytes().await }) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed("read", key, &e)),
        }
    }

    fn size(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        let (s3, path) = (self.s3.clone(), self.path(key));
        match self.run(async move { s3.head(&path).await }) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed("head", key, &e)),
        }
    }

    fn create(&self, key: &str, bytes: Bytes) -> Result<bool, ObjectError> {
        let (s3, path) = (self.s3.clone(), self.path(key));
        self.run(async move { put_new(&s3, &path, bytes).await })
            .map_err(|e| self.failed("write", key, &e))
    }

    /// Up to [`PUTS_AT_ONCE`] writes in flight.
    fn create_many(&self, objects: Vec<(String, Bytes)>) -> Result<usize, ObjectError> {
        let s3 = self.s3.clone();
        let puts: Vec<(Path, Bytes)> = objects
            .into_iter()
            .map(|(key, bytes)| (self.path(&key), bytes))
            .collect();
        let created = self.run(async move {
            futures::stream::iter(puts)
                .map(|(path, bytes)| {
                    let s3 = s3.clone();
                    async move { put_new(&s3, &path, bytes).await.map(usize::from) }
                })
                .buffer_unordered(PUTS_AT_ONCE)
                .try_fold(0, |new, one| async move { Ok(new + one) })
                .await
        });
        created.map_err(|e| self.failed("write", "chunks", &e))
    }

    fn delete(&self, key: &str) -> Result<(), ObjectError> {
        let (s3, path) = (self.s3.clone(), self.path(key));
        match self.run(async move { s3.delete(&path).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("delete", key, &e)),
        }
    }

    fn list(&self, prefix: &str, each: &mut dyn FnMut(&str, u64)) -> Result<(), ObjectError> {
        let (s3, path) = (self.s3.clone(), self.path(prefix.trim_end_matches('/')));
        let listed = self
            .run(async move { s3.list(Some(&path)).try_collect::<Vec<_>>().await })
            .map_err(|e| self.failed("list", prefix, &e))?;
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        for meta in listed {
            let key = meta.location.as_ref();
            if let Some(key) = key.strip_prefix(&strip)
                && key.starts_with(prefix)
            {
                each(key, meta.size);
            }
        }
        Ok(())
    }
}

/// Writes an object unless one of that name exists (`If-None-Match: *`); false when it
/// existed.
async fn put_new(s3: &AmazonS3, path: &Path, bytes: Bytes) -> Result<bool, object_store::Error> {
    let options = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match s3.put_opts(path, PutPayload::from(bytes), options).await {
        Ok(_) => Ok(true),
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The S3 server of the tests (tests/run starts `moto_server` and names it).
    fn test_endpoint() -> Option<String> {
        let endpoint = std::env::var("HOTATE_TEST_S3").ok();
        hotate_tests::needs(
            "s3_objects_keep_the_store_contract",
            "an S3-compatible server (tests/run starts moto_server; or set \
             HOTATE_TEST_S3=http://HOST:PORT with a bucket named hotate-test)",
            endpoint.is_some(),
        )
        .then_some(endpoint)
        .flatten()
    }

    fn builder(endpoint: &str) -> AmazonS3Builder {
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
    }

    #[test]
    fn s3_objects_keep_the_store_contract() {
        let Some(endpoint) = test_endpoint() else {
            return;
        };
        hotate_engine::store::objects_contract::check(&|| {
            let prefix = uuid::Uuid::new_v4().simple().to_string();
            S3Objects::open_with(&format!("s3://hotate-test/{prefix}"), builder(&endpoint)).unwrap()
        });
        let missing = S3Objects::open_with("s3://no-such-bucket/x", builder(&endpoint));
        let said = missing.unwrap_err().0;
        assert!(said.contains("check that the bucket exists"), "{said}");
        let wrong = S3Objects::open_with("gs://bucket", builder(&endpoint));
        assert!(wrong.unwrap_err().0.contains("not an S3 URL"));
    }
}
